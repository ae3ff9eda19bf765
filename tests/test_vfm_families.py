"""``vfm`` on AnomalyVFM's other official backbones: DINOv2 with registers and DINOv3 (timm), CLIP ViT-L/14-336
(open_clip).

``tests/data/vfm_official_{dinov2,clip,dinov3}.npz`` hold the official code's outputs and its checkpoint's tensor
names and shapes on tiny configurations (DINOv2, CLIP: width 64, 6 blocks, run at 280 px so position tables are
resized as at 672; DINOv3: timm's T/16 size, 128 px),
recorded by ``evaluation/vfm_official_vit.py`` from a checkout of MaticFuc/AnomalyVFM with the same seeded weights
and non-zero adapters. Here the official-layout checkpoint is written from zsad's tensors, checked name by name
and shape by shape against the recorded one, imported with ``zsad adapters import-anomalyvfm`` and scored."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zsad
from zsad.errors import AdapterError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))
from vfm_official_vit import RANK, official_state, size_of, zsad_backbone  # noqa: E402

DATA = Path(__file__).parent / "data"
FAMILIES = ("dinov2", "clip", "dinov3")


@pytest.fixture(scope="module", params=FAMILIES)
def official(request, tmp_path_factory):
    """(family, recorded outputs, the official checkpoint written from zsad's seeded tensors)."""
    from zsad.methods.vfm.adapter import random_modules

    family = request.param
    folder = tmp_path_factory.mktemp(family)
    modules = random_modules(zsad_backbone(family, folder), seed=1, rank=RANK)
    state = official_state(family, modules)
    torch.save(state, folder / "model.pkl")
    return family, np.load(DATA / f"vfm_official_{family}.npz"), state, folder


def _import(path: Path, out: Path, *extra: str) -> Path:
    from zsad.cli import main

    assert main(["adapters", "import-anomalyvfm", str(path), "--out", str(out), *extra]) == 0
    return out


def test_the_checkpoint_has_the_official_names_and_shapes(official):
    _, recorded, state, _ = official
    ours = {k: str(tuple(v.shape)) for k, v in state["model_state_dict"].items()}
    assert ours == dict(zip(recorded["keys"].tolist(), recorded["shapes"].tolist()))


def test_an_imported_checkpoint_scores_as_the_official_code(official, tmp_path):
    from zsad.adapters import read_adapter_config
    from zsad.methods.vfm.adapter import VfmSettings
    from zsad.methods.vfm.official import scoring_backbone

    family, recorded, _, folder = official
    size = size_of(family)
    out = _import(folder / "model.pkl", tmp_path / "imported", "--image-size", str(size))
    settings = VfmSettings.from_config(read_adapter_config(out), str(out))
    assert (out / "backbone.safetensors").is_file() == (family != "clip")  # CLIP's tower comes from open_clip
    detector = zsad.create("vfm", backbone=scoring_backbone(settings, out), image_size=size, device="cpu",
                           precision="fp32", adapter=str(out), warn_random=False)
    images = [Image.fromarray(recorded[f"image{i}"]) for i in range(2)]
    with torch.inference_mode():
        scores, maps = detector.method(detector.method.preprocess(images))
    np.testing.assert_allclose(scores, recorded["score"], atol=1e-5)
    np.testing.assert_allclose(maps, recorded["map"], atol=1e-4)
    for i, result in enumerate(detector.score(images)):
        assert abs(result.image_score - float(recorded["score"][i])) <= 1e-5
        np.testing.assert_allclose(result.raw.anomaly_map, recorded[f"at_size{i}"], atol=1e-4)
    assert float(recorded["map"].std()) > 1e-3 and float(np.ptp(recorded["score"])) > 1e-4  # not constant


def test_the_family_sets_the_official_input_size(official, tmp_path):
    from zsad.adapters import read_adapter_config

    family, _, _, folder = official
    out = _import(folder / "model.pkl", tmp_path / "default", "--no-backbone")
    # DINOv2 and CLIP: 672 px (48 x 48 patches of 14), DINOv3: 768 (48 x 48 of 16)
    assert read_adapter_config(out)["image_size"] == (768 if family == "dinov3" else 672)


@pytest.mark.parametrize("official", ["dinov2", "clip"], indirect=True)  # DINOv3's own refusal: below
def test_checkpoints_that_do_not_fit_are_refused_in_one_line(official, tmp_path, capsys):
    from zsad.cli import main
    from zsad.methods.vfm.official import import_checkpoint

    family, _, state, _ = official
    net = state["model_state_dict"]
    first_block = next(k for k in net if (".layer." in k and k.endswith("weight")))
    misshapen = {**state, "model_state_dict": {**net, first_block: torch.zeros(3, 3)}}
    unknown = {**state, "model_state_dict": {**net, "net.something_else": torch.zeros(3)}}
    cases = {"misshapen": misshapen, "unknown": unknown}
    for label, bad in cases.items():
        torch.save(bad, tmp_path / f"{label}.pkl")
        with pytest.raises(AdapterError):
            import_checkpoint(tmp_path / f"{label}.pkl", tmp_path / label)
        assert not (tmp_path / label).exists()
        assert main(["adapters", "import-anomalyvfm", str(tmp_path / f"{label}.pkl"), "--out",
                     str(tmp_path / label)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"{label}.pkl" in err


def test_siglip2_is_refused_with_the_reason(tmp_path):
    from zsad.methods.vfm.official import import_checkpoint

    path = tmp_path / "model.pkl"
    torch.save({"model_state_dict": {"net.head.probe": torch.zeros(1, 1, 4)}, "decoder_state_dict": {},
                "predictor_state_dict": {}}, path)
    with pytest.raises(AdapterError, match="siglip2 checkpoint, which zsad does not import.*NaFlex"):
        import_checkpoint(path, tmp_path / "out")


@pytest.mark.parametrize("official", ["dinov3"], indirect=True)
def test_a_dinov3_k_bias_timm_cannot_hold_is_refused(official, tmp_path):
    from zsad.methods.vfm.official import import_checkpoint

    _, _, state, _ = official
    state = {**state, "model_state_dict": dict(state["model_state_dict"])}
    key = "net.blocks.3.attn.qkv.layer.bias"
    state["model_state_dict"][key] = state["model_state_dict"][key] + 0.01
    torch.save(state, tmp_path / "model.pkl")
    with pytest.raises(AdapterError, match="non-zero k part"):
        import_checkpoint(tmp_path / "model.pkl", tmp_path / "out")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_released_backbone_missing_fails_fast_with_one_line(family, tmp_path, monkeypatch):
    from zsad.errors import WeightsNotFoundError
    from zsad.methods.vfm.families import FAMILIES as OFFICIAL
    from zsad.methods.vfm.method import VfmMethod

    name = OFFICIAL[family].backbone
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        zsad.create("vfm", backbone=name, image_size=OFFICIAL[family].image_size, device="cpu",
                    cache_dir=str(tmp_path), adapter=str(tmp_path / "never-read"))
    text = str(info.value)
    assert "\n" not in text and name.split(":")[1] in text
    assert VfmMethod.pos_interpolation_for(name) == OFFICIAL[family].pos_interpolation
