"""``vfm`` (AnomalyVFM): equal to the official code, adapters folded without changing the model, the published
choices and their alternatives, the RADIO weights' fail-fast message, and importing official checkpoints.

``tests/data/vfm_official.npz`` holds the official code's outputs on the tiny configuration, recorded by
``evaluation/vfm_official.py`` (MaticFuc/AnomalyVFM imported from a checkout) from the same seeded weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zsad
from zsad.errors import AdapterError, UsageError, WeightsNotFoundError

DATA = Path(__file__).parent / "data" / "vfm_official.npz"
SIZE, RANK = 64, 8


def _images(count: int = 3, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(97, 61), (64, 64), (50, 83)]
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for w, h in sizes[:count]]


@pytest.fixture(scope="module")
def parts():
    """The recorded configuration's backbone and trained parts (seeds as in evaluation/vfm_official.py)."""
    from zsad.backbones import load_backbone
    from zsad.methods.vfm.adapter import random_modules

    backbone = load_backbone("radio:tiny:random", image_size=SIZE, pos_interpolation="bicubic", warn_random=False)
    return backbone, random_modules(backbone, seed=1, rank=RANK)


@pytest.fixture(scope="module")
def adapter(parts, tmp_path_factory):
    from zsad.methods.vfm.adapter import save_vfm_adapter

    return str(save_vfm_adapter(tmp_path_factory.mktemp("vfm") / "adapter", parts[1]))


def _create(adapter: str | None, backbone: str = "radio:tiny:random", **options):
    if adapter:
        options["adapter"] = adapter
    return zsad.create("vfm", backbone=backbone, image_size=SIZE, device="cpu", precision="fp32", warn_random=False,
                       **options)


def test_equals_the_official_code_on_recorded_outputs(parts, adapter):
    from zsad.methods.vfm.features import vfm_features

    recorded = np.load(DATA)
    backbone, modules = parts
    sums = [float(sum(p.detach().double().abs().sum() for p in m.parameters())) for m in (backbone.model, modules)]
    np.testing.assert_allclose(sums, recorded["weights_sum"], rtol=1e-9,
                               err_msg="the seeded weights changed: re-record with evaluation/vfm_official.py")
    images = [Image.fromarray(recorded[f"image{i}"]) for i in range(3)]
    detector = _create(adapter, pos_interpolation="bicubic")  # radio_local.py's resize, as the recording ran
    method = detector.method
    with torch.inference_mode():
        x = method.backbone.preprocess(images)
        summary, spatial = vfm_features(method.backbone, x)
        logits = method.decoder.mask_logits(spatial)
        scores, maps = method(x)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    np.testing.assert_allclose(x, (torch.from_numpy(recorded["input"]) - mean) / std, atol=1e-6)
    np.testing.assert_allclose(summary, recorded["summary"], atol=1e-5)
    np.testing.assert_allclose(spatial, recorded["spatial"], atol=1e-5)
    # oneDNN's linear (the default on CPU) sums in another order than the official F.linear: the mask logits (up to
    # |6|) move by ~1e-5 relative to their size, the map and score by < 1e-6
    np.testing.assert_allclose(logits, recorded["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(maps, recorded["map"], atol=1e-4)
    np.testing.assert_allclose(scores, recorded["score"], atol=1e-5)
    # F.linear: the official arithmetic (bit-identical where recorded; other machines and BLAS builds round
    # differently, so the check is at float32 rounding, 10x tighter than the oneDNN path's)
    plain = _create(adapter, pos_interpolation="bicubic", onednn=False).method
    with torch.inference_mode():
        plain_summary, plain_spatial = vfm_features(plain.backbone, x)
        plain_scores, plain_maps = plain(x)
    for ours, theirs in ((plain_summary, "summary"), (plain_spatial, "spatial"), (plain_maps, "map"),
                         (plain_scores, "score")):
        np.testing.assert_allclose(ours.numpy(), recorded[theirs], rtol=1e-6, atol=1e-6)
    for i, result in enumerate(detector.score(images)):
        assert abs(result.image_score - float(recorded["score"][i])) <= 1e-5
        np.testing.assert_allclose(result.raw.anomaly_map, recorded[f"at_size{i}"], atol=1e-4)
    assert float(np.abs(recorded["map"]).std()) > 1e-3  # the recorded maps are not constant


def test_folded_adapters_equal_the_adapters_applied_each_step_and_change_the_model(parts, adapter):
    from zsad.methods.vfm.dora import fold, run_adapted
    from zsad.methods.vfm.features import vfm_features

    backbone, modules = parts
    x = backbone.preprocess(_images(2))
    with torch.no_grad():
        adapted = modules.dora.adapted(backbone)
        params = dict(backbone.named_parameters())
        for name, weight in adapted.items():  # each adapted weight really differs from the frozen one
            assert float((weight - params[name]).abs().max()) > 1e-3, name
        folded = vfm_features(fold(backbone, modules.dora), x)
        live = run_adapted(backbone, modules.dora, vfm_features, x)  # training's path: adapters applied each step
        plain = vfm_features(backbone, x)
    torch.testing.assert_close(folded[0], live[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(folded[1], live[1], rtol=0, atol=1e-6)
    assert float((folded[0] - plain[0]).abs().max()) > 1e-2
    # folding leaves the shared backbone as it was
    torch.testing.assert_close(vfm_features(backbone, x)[0], plain[0], rtol=0, atol=0)


def test_published_choices_and_their_alternatives(adapter):
    images = _images(2)
    published = _create(adapter).score(images)  # bilinear position table, sigmoid before the 5 x 5 filter
    bicubic = _create(adapter, pos_interpolation="bicubic").score(images)
    pool_first = _create(adapter, order="pool-sigmoid").score(images)
    no_filter = _create(adapter, kernel=1).score(images)
    for other in (bicubic, pool_first, no_filter):
        assert max(float(np.abs(a.anomaly_map - b.anomaly_map).max()) for a, b in zip(published, other)) > 1e-4
    # the filter and the order change only the map, never the image score
    for other in (pool_first, no_filter):
        assert [r.image_score for r in other] == [r.image_score for r in published]
    with pytest.raises(UsageError, match="odd"):
        _create(adapter, kernel=4)
    with pytest.raises(UsageError, match="order"):
        _create(adapter, order="sideways")


def test_map_follows_the_mask_logits_and_has_each_images_size(parts, adapter):
    from zsad.methods.vfm.decoder import logits_to_map

    logits = torch.full((1, 1, 8, 8), -6.0)
    logits[..., 2:4, 5:7] = 6.0
    amap = logits_to_map(logits)[0]
    assert amap.shape == (8, 8) and float(amap[2:4, 5:7].min()) > float(amap[6:, :3].max())
    # sigmoid then a 5 x 5 mean with zero padding counted: a constant map loses mass at the border only
    flat = logits_to_map(torch.zeros(1, 1, 8, 8))[0]
    assert abs(float(flat[4, 4]) - 0.5) < 1e-6 and abs(float(flat[0, 0]) - 0.5 * 9 / 25) < 1e-6
    for image, result in zip(_images(3), _create(adapter).score(_images(3))):
        assert result.anomaly_map.shape == (image.size[1], image.size[0])


def test_radio_weights_missing_fail_fast_with_one_line(tmp_path, monkeypatch):
    from zsad.backbones import load_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        load_backbone("radio:v2.5-l", image_size=768, cache_dir=str(tmp_path))
    text = str(info.value)
    assert "\n" not in text and "nvidia/RADIO-L" in text and "radio:v2.5-l:/path" in text
    with pytest.raises(UsageError, match="multiple of the patch size 16"):
        load_backbone("radio:tiny:random", image_size=70, warn_random=False)
    with pytest.raises(UsageError, match="no released weights"):
        load_backbone("radio:tiny")


def test_a_real_backbone_needs_an_adapter_and_the_adapter_must_fit(parts, adapter, tmp_path):
    from safetensors.torch import save_file

    backbone = parts[0]
    weights = tmp_path / "radio-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, str(weights))
    with pytest.raises(AdapterError, match="needs a trained AnomalyVFM adapter"):
        _create(None, backbone=f"radio:tiny:{weights}")
    with pytest.raises(AdapterError, match="made for backbone"):
        zsad.create("vfm", backbone="tiny-random", image_size=56, device="cpu", adapter=adapter, warn_random=False)
    # the same weights from a file score as the seeded model (a warning says the names differ)
    a = _create(adapter).score(_images(1))[0]
    b = _create(adapter, backbone=f"radio:tiny:{weights}").score(_images(1))[0]
    assert a.image_score == b.image_score and np.array_equal(a.anomaly_map, b.anomaly_map)


# -- importing official checkpoints ---------------------------------------------------------------------------------


def official_state(backbone, modules) -> dict[str, dict[str, torch.Tensor]]:
    """zsad's tensors under the names of AnomalyVFM's train.py checkpoint (``model.pkl``), written in the test
    (the official classes are not imported): the wrapper's ``net.`` tensors, the decoder's and the predictor's."""
    vit = backbone.model
    net = {"net.model.patch_generator.embedder.weight": vit.patch_embed.weight,
           "net.model.patch_generator.cls_token.token": vit.prefix,
           "net.model.patch_generator.pos_embed": vit.pos_embed, "net.summary_idxs": vit.summary_idxs,
           "net.input_conditioner.norm_mean": backbone.mean.view(3, 1, 1),
           "net.input_conditioner.norm_std": backbone.std.view(3, 1, 1)}
    for key, value in vit.state_dict().items():
        if key.startswith("blocks."):
            _, block, rest = key.split(".", 2)
            if rest.startswith(("attn.qkv.", "attn.proj.")):
                rest = rest.replace(".weight", ".layer.weight").replace(".bias", ".layer.bias")
            net[f"net.model.blocks.{block}.{rest}"] = value
    for key, value in modules.dora.state_dict().items():
        _, block, which, name = key.split(".")
        net[f"net.model.blocks.{block}.attn.{which}.{name}"] = value
    head = {"lin.weight": modules.head.weight, "lin.bias": modules.head.bias}
    return {"model_state_dict": {k: v.detach().clone() for k, v in net.items()},
            "decoder_state_dict": {k: v.detach().clone() for k, v in modules.decoder.state_dict().items()},
            "predictor_state_dict": {k: v.detach().clone() for k, v in head.items()}}


@pytest.fixture(scope="module")
def official_files(parts, tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("official")
    state = official_state(*parts)
    torch.save(state, folder / "model.pkl")
    hub = {f"model.{k}": v for k, v in state["model_state_dict"].items()}
    hub.update({f"decoder.{k}": v for k, v in state["decoder_state_dict"].items()})
    hub.update({f"predictor.{k}": v for k, v in state["predictor_state_dict"].items()})
    save_file({k: v.contiguous() for k, v in hub.items()}, str(folder / "model.safetensors"))
    return folder, state


@pytest.mark.parametrize("name", ["model.pkl", "model.safetensors"])
def test_an_official_checkpoint_imports_and_scores_as_the_same_model(official_files, adapter, tmp_path, name):
    from zsad.cli import main

    folder, _ = official_files
    out = tmp_path / "imported"
    assert main(["adapters", "import-anomalyvfm", str(folder / name), "--out", str(out), "--image-size",
                 str(SIZE)]) == 0
    assert (out / "adapter.json").is_file() and (out / "backbone.safetensors").is_file()
    images = _images(3)
    expected = _create(adapter).score(images)
    got = _create(str(out), backbone=f"radio:tiny:{out / 'backbone.safetensors'}").score(images)
    for a, b in zip(expected, got):
        assert a.image_score == b.image_score and np.array_equal(a.anomaly_map, b.anomaly_map)


def _write(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_an_official_checkpoint_that_does_not_fit_is_refused_in_one_line(official_files, tmp_path, capsys):
    from zsad.cli import main
    from zsad.methods.vfm.official import import_checkpoint

    _, state = official_files
    renamed = {**state, "model_state_dict": dict(state["model_state_dict"])}
    renamed["model_state_dict"]["net.model.blocks.0.attn.qkv.extra"] = torch.zeros(3)
    misshapen = {**state, "decoder_state_dict": dict(state["decoder_state_dict"])}
    misshapen["decoder_state_dict"]["final.weight"] = torch.zeros(2, 32, 1, 1)
    missing = {**state, "predictor_state_dict": {"lin.weight": state["predictor_state_dict"]["lin.weight"]}}
    no_dora = {**state, "model_state_dict": {k: v for k, v in state["model_state_dict"].items()
                                             if "lora" not in k and "mag" not in k}}
    cases = {"renamed": (renamed, "unexpected adapter tensor"), "misshapen": (misshapen, "shape"),
             "missing": (missing, "missing"), "no-dora": (no_dora, "DoRA")}
    for label, (bad, message) in cases.items():
        with pytest.raises(AdapterError, match=message):
            import_checkpoint(_write(bad, tmp_path / f"{label}.pkl"), tmp_path / label, image_size=SIZE)
        assert not (tmp_path / label).exists()  # nothing written
    # code in the pickle is never run (weights_only): refused as not tensors only
    _write({"model_state_dict": {"x": Path("evil")}}, tmp_path / "code.pkl")
    assert main(["adapters", "import-anomalyvfm", str(tmp_path / "code.pkl"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "weights_only" in err
