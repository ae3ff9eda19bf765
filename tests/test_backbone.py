import logging

import pytest
import torch
import torch.nn.functional as F

from zsad.backbones import load_backbone
from zsad.backbones.clip import interpolate_pos_embed
from zsad.backbones.names import parse_backbone_name
from zsad.errors import UsageError, WeightsNotFoundError


def test_token_shapes_and_layer_selection(tiny_backbone):
    images = torch.randn(2, 3, 112, 112)
    out = tiny_backbone.tokens(images, [0, 2, -1])
    grid = tiny_backbone.grid_size
    assert grid == 8
    assert set(out.layers) == {0, 2, tiny_backbone.num_layers - 1}
    for tokens in out.layers.values():
        assert tokens.shape == (2, 1 + grid * grid, tiny_backbone.width)
    assert out.pooled.shape == (2, tiny_backbone.embed_dim)
    assert not torch.equal(out.layers[0], out.layers[2])


def test_plain_tokens_equal_open_clip_intermediates(tiny_backbone):
    images = torch.randn(1, 3, 112, 112)
    ours = tiny_backbone.tokens(images, [1, 3])
    ref = tiny_backbone.model.visual.forward_intermediates(images, indices=[1, 3], output_fmt="NLC")
    for mine, theirs in zip((ours.layers[1], ours.layers[3]), ref["image_intermediates"]):
        torch.testing.assert_close(mine[:, 1:], theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.pooled, ref["image_features"], atol=1e-5, rtol=1e-5)


def test_out_of_range_layer_is_a_usage_error(tiny_backbone):
    with pytest.raises(UsageError, match="out of range"):
        tiny_backbone.tokens(torch.randn(1, 3, 112, 112), [99])


def _reference_vv(backbone, images, vv_start, tap):
    """CLIP Surgery's dual path written out by hand from the raw weights."""
    visual = backbone.model.visual
    x = backbone._embed(images)
    surgery = None
    for index, block in enumerate(visual.transformer.resblocks):
        if index >= vv_start:
            h = block.ln_1(x)
            width = h.shape[-1]
            heads = block.attn.num_heads
            v = h @ block.attn.in_proj_weight[2 * width:].T + block.attn.in_proj_bias[2 * width:]
            b, n, _ = v.shape
            v = v.view(b, n, heads, -1).permute(0, 2, 1, 3)
            weights = torch.softmax(torch.einsum("bhid,bhjd->bhij", v, v) / (v.shape[-1] ** 0.5), dim=-1)
            mixed = torch.einsum("bhij,bhjd->bhid", weights, v).permute(0, 2, 1, 3).reshape(b, n, width)
            out = mixed @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
            surgery = (x if surgery is None else surgery) + out
        x = block(x)
        if index == tap:
            return surgery


def test_vv_path_equals_hand_written_reference_and_differs_from_plain(tiny_backbone):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 112, 112)
    vv_start, tap = 2, 4
    out = tiny_backbone.tokens(images, [tap, 1], vv=True, vv_start=vv_start)
    plain = tiny_backbone.tokens(images, [tap, 1])
    torch.testing.assert_close(out.layers[tap], _reference_vv(tiny_backbone, images, vv_start, tap),
                               atol=1e-5, rtol=1e-5)
    assert (out.layers[tap] - plain.layers[tap]).abs().max() > 1e-3
    # blocks before vv_start have no V-V stream yet: plain tokens; the original stream is untouched
    torch.testing.assert_close(out.layers[1], plain.layers[1])
    torch.testing.assert_close(out.pooled, plain.pooled)


def test_pos_embed_interpolation():
    torch.manual_seed(0)
    pos = torch.randn(1 + 16 * 16, 8)
    same = interpolate_pos_embed(pos, 16)
    torch.testing.assert_close(same, pos)
    bigger = interpolate_pos_embed(pos, 37, mode="bilinear")
    assert bigger.shape == (1 + 37 * 37, 8)
    torch.testing.assert_close(bigger[0], pos[0])
    grid = pos[1:].reshape(1, 16, 16, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(37, 37), mode="bilinear", align_corners=False)
    torch.testing.assert_close(bigger[1:], expected.permute(0, 2, 3, 1).reshape(-1, 8))
    constant = interpolate_pos_embed(torch.ones(1 + 4, 3), 6, mode="bicubic")
    torch.testing.assert_close(constant, torch.ones(1 + 36, 3))


def test_backbone_at_new_size_has_matching_grid(tiny_backbone):
    assert tiny_backbone.model.visual.positional_embedding.shape[0] == 1 + tiny_backbone.grid_size ** 2
    other = load_backbone("tiny-random", image_size=70)
    assert other.grid_size == 5
    assert other.tokens(torch.randn(1, 3, 70, 70), [0]).layers[0].shape[1] == 26


def test_image_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(UsageError, match="multiple of the patch size"):
        load_backbone("tiny-random", image_size=100)


def test_random_weights_warn(caplog):
    with caplog.at_level(logging.WARNING):
        load_backbone("tiny-random", image_size=56)
    assert "random weights" in caplog.text and "meaningless" in caplog.text


def test_text_encoding_shape(tiny_backbone):
    emb = tiny_backbone.encode_text(["a photo of a damaged object.", "a photo of an object."])
    assert emb.shape == (2, tiny_backbone.embed_dim)
    assert not torch.allclose(emb[0], emb[1])


@pytest.mark.parametrize("name, kind, arch, source", [
    ("tiny-random", "tiny", "tiny-random", ""),
    ("ViT-L-14-336:openai", "tag", "ViT-L-14-336", "openai"),
    ("ViT-B-16:random", "random", "ViT-B-16", ""),
    ("ViT-B-16:/models/clip.bin", "file", "ViT-B-16", "/models/clip.bin"),
    ("ViT-B-16:weights.safetensors", "file", "ViT-B-16", "weights.safetensors"),
    ("hf-hub:org/model", "hf-hub", "org/model", "org/model"),
])
def test_parse_backbone_names(name, kind, arch, source):
    spec = parse_backbone_name(name)
    assert (spec.kind, spec.arch, spec.source) == (kind, arch, source)


@pytest.mark.parametrize("name", ["", "ViT-B-16", "ViT-B-16:", "hf-hub:noslash"])
def test_malformed_backbone_names(name):
    with pytest.raises(UsageError):
        parse_backbone_name(name)


def test_missing_weights_offline_give_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        load_backbone("ViT-L-14-336:openai", cache_dir=str(tmp_path))
    message = str(info.value)
    assert "ViT-L-14-336:openai" in message
    assert str(tmp_path) in message  # where it looked
    assert "HF_HUB_OFFLINE=1" in message
    assert "open_clip.create_model('ViT-L-14-336', pretrained='openai')" in message  # what to run
    assert "tiny-random" in message


def test_missing_hf_hub_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="huggingface-cli download org/clip"):
        load_backbone("hf-hub:org/clip", cache_dir=str(tmp_path))


def test_unknown_arch_tag_and_missing_file(tmp_path):
    with pytest.raises(UsageError, match="unknown backbone architecture 'NoSuchNet'"):
        load_backbone("NoSuchNet:openai")
    with pytest.raises(UsageError, match="unknown pretrained tag 'nope'.*openai"):
        load_backbone("ViT-L-14-336:nope")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_backbone(f"ViT-B-16:{tmp_path / 'absent.bin'}")


def test_local_weights_file_loads(tmp_path):
    """A checkpoint saved from a random model of a real architecture loads through ARCH:/path."""
    import open_clip

    model = open_clip.create_model("ViT-S-32-alt" if "ViT-S-32-alt" in open_clip.list_models() else "ViT-S-32")
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    arch = "ViT-S-32-alt" if "ViT-S-32-alt" in open_clip.list_models() else "ViT-S-32"
    backbone = load_backbone(f"{arch}:{path}", image_size=64)
    assert not backbone.random_weights
    torch.testing.assert_close(backbone.model.visual.conv1.weight, model.visual.conv1.weight)
