"""Vision-only timm backbones: tokens, layer selection, the original DINOv2 key layout, MuSc on them, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import zsad
from zsad.backbones import load_backbone, parse_backbone_name
from zsad.backbones.tiny_dino import build_tiny_dino
from zsad.cli import main
from zsad.data.synthetic import make_sample
from zsad.errors import UsageError, WeightsNotFoundError

TINY = "timm:tiny-dinov2:random"


def _by_hand(model, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every block's final-normed patch tokens and the final normed class token, run block by block from timm's
    own modules (not through forward_intermediates, which the backbone uses)."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    out = []
    for block in model.blocks:
        x = block(x)
        out.append(model.norm(x)[:, model.num_prefix_tokens:])
    return out, model.norm(x)[:, 0]


def test_names_parse_into_the_timm_family():
    spec = parse_backbone_name("timm:vit_large_patch14_dinov2.lvd142m")
    assert (spec.family, spec.kind, spec.arch, spec.vision_only) == ("timm", "tag", "vit_large_patch14_dinov2.lvd142m",
                                                                     True)
    assert parse_backbone_name("timm:vit_small_patch16_dinov3.lvd1689m:random").random_weights
    spec = parse_backbone_name("timm:vit_large_patch14_dinov2:/w/dinov2_vitl14_pretrain.pth")
    assert (spec.kind, spec.source) == ("file", "/w/dinov2_vitl14_pretrain.pth")
    assert not parse_backbone_name("ViT-B-16:openai").vision_only
    with pytest.raises(UsageError):
        parse_backbone_name("timm:tiny-dinov2")


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_tokens_shapes_layers_and_values(reg_tokens):
    from zsad.backbones.names import BackboneSpec
    from zsad.backbones.timm import TimmBackbone

    model = build_tiny_dino(112, reg_tokens=reg_tokens, seed=3)
    bb = TimmBackbone(model, BackboneSpec("t", "random", "tiny-dinov2", family="timm"), 112)
    images = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    out = bb.tokens(images, [4, 1, -1])
    assert list(out.plain) == [4, 1, 5]
    expected, cls = _by_hand(model, images)
    for layer in (1, 4, 5):
        tokens = out.plain[layer]
        assert tokens.shape == (2, 1 + 8 * 8, 64)  # a zero token in front, registers and class token removed
        assert torch.count_nonzero(tokens[:, 0]) == 0
        torch.testing.assert_close(tokens[:, 1:], expected[layer], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled, cls, atol=1e-5, rtol=1e-5)
    assert bb.default_layers() == [1, 2, 3, 5]
    with pytest.raises(UsageError, match="out of range"):
        bb.tokens(images, [6])
    with pytest.raises(UsageError, match="CLIP backbone"):
        bb.tokens(images, [1], vv=True)


def test_named_architectures_pick_musc_layers_and_resize_position_embeddings():
    bb = load_backbone("timm:vit_small_patch14_dinov2.lvd142m:random", image_size=98, warn_random=False)
    assert bb.default_layers() == [2, 5, 8, 11]  # MuSc's B/S-size setting; [5, 11, 17, 23] for 24 blocks
    assert bb.model.pos_embed.shape[1] == 1 + 7 * 7
    assert bb.tokens(torch.zeros(1, 3, 98, 98), [11]).plain[11].shape == (1, 50, 384)
    assert bb.mean.view(-1).tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_patch16_models_ask_for_a_multiple_of_16():
    with pytest.raises(UsageError, match="--image-size 512"):
        load_backbone("timm:vit_large_patch16_dinov3.lvd1689m:random", image_size=518, warn_random=False)


def _release_layout(model, reg_tokens: int) -> dict[str, torch.Tensor]:
    """The original DINOv2 release's keys (``dinov2_vit*14_pretrain.pth``) for a timm model, written by hand: an
    extra ``mask_token``; with registers, ``register_tokens`` and a position embedding that covers the class token
    (which timm folds into ``cls_token``)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    width = state["cls_token"].shape[-1]
    state["mask_token"] = torch.zeros(1, width)
    if reg_tokens:
        pos_cls = torch.randn(1, 1, width, generator=torch.Generator().manual_seed(9))
        state["register_tokens"] = state.pop("reg_token")
        state["cls_token"] = state["cls_token"] - pos_cls
        state["pos_embed"] = torch.cat([pos_cls, state["pos_embed"]], dim=1)
    return state


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_original_release_layout_loads_through_timms_filter(tmp_path, reg_tokens):
    source = build_tiny_dino(224, reg_tokens=reg_tokens, seed=7)
    path = tmp_path / "dinov2_tiny_pretrain.pth"
    torch.save(_release_layout(source, reg_tokens), path)
    bb = load_backbone(f"timm:tiny-dinov2:{path}", image_size=224, warn_random=False)
    assert not bb.random_weights
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    expected, cls = _by_hand(source, images)
    out = bb.tokens(images, [2, 5])
    torch.testing.assert_close(out.plain[5][:, 1:], expected[5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled, cls, atol=1e-5, rtol=1e-5)
    smaller = load_backbone(f"timm:tiny-dinov2:{path}", image_size=112, warn_random=False)  # pos-embed resampled
    assert smaller.tokens(images[:, :, :112, :112], [5]).plain[5].shape == (1, 65, 64)


def test_named_model_loads_a_release_file(tmp_path):
    import timm

    source = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=126, num_classes=0).eval()
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(_release_layout(source, 0), path)
    bb = load_backbone(f"timm:vit_small_patch14_dinov2.lvd142m:{path}", image_size=126, warn_random=False)
    torch.testing.assert_close(bb.model.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)
    images = torch.randn(1, 3, 126, 126, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(bb.tokens(images, [11]).pooled, _by_hand(source, images)[1], atol=1e-4, rtol=1e-4)


def test_musc_on_a_dino_backbone_ranks_planted_defects_first():
    rng = np.random.default_rng(0)
    defects = ("hole", "contamination", "scratch", "color")
    samples = [make_sample("grain", None if i < 8 else defects[i - 8], size=224, rng=rng) for i in range(12)]
    detector = zsad.create("musc", backbone=TINY, image_size=224, batch_size=6, warn_random=False)
    feats = detector.method.extract(detector.backbone.preprocess([samples[0].image]))
    assert feats.pooled.norm() > 0 and abs(float(feats.pooled.norm()) - 1.0) > 1e-3  # raw cls for RsCIN, not unit
    results = detector.score([s.image for s in samples])
    labels = [int(s.defect_type is not None) for s in samples]
    assert roc_auc_score(labels, [r.image_score for r in results]) >= 0.8
    masks = np.concatenate([s.mask.ravel() for s in samples])
    assert roc_auc_score(masks, np.concatenate([r.anomaly_map.ravel() for r in results])) >= 0.85


@pytest.mark.parametrize("method", ["clip", "anomalyclip", "auto"])
def test_text_methods_refuse_a_vision_only_backbone_with_one_line(method, capsys, tmp_path):
    with pytest.raises(UsageError) as info:
        zsad.create(method, backbone=TINY, image_size=112, warn_random=False)
    message = str(info.value)
    assert "\n" not in message and "vision-only" in message and f"'{method}'" in message
    image = tmp_path / "a.png"
    make_sample("grain", None, size=64, rng=np.random.default_rng(0)).image.save(image)
    code = main(["score", str(image), "--method", method, "--backbone", TINY, "--image-size", "112",
                 "--out", str(tmp_path / "out"), "-q"])
    err = [line for line in capsys.readouterr().err.splitlines() if "vision-only" in line]
    assert code == 2 and len(err) == 1


def test_missing_weights_offline_give_one_clear_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsNotFoundError) as info:
        load_backbone("timm:vit_small_patch14_dinov2.lvd142m", image_size=224, cache_dir=str(tmp_path / "empty"))
    message = str(info.value)
    assert "\n" not in message and "HF_HUB_OFFLINE=1" in message
    assert "timm/vit_small_patch14_dinov2.lvd142m" in message and "timm.create_model" in message
    image = tmp_path / "a.png"
    make_sample("grain", None, size=64, rng=np.random.default_rng(0)).image.save(image)
    code = main(["score", str(image), "--method", "musc", "--backbone", "timm:vit_small_patch14_dinov2.lvd142m",
                 "--cache-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "-q"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code != 0 and sum("HF_HUB_OFFLINE=1" in line for line in err) == 1
