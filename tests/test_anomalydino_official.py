"""zsad's AnomalyDINO equals the official code (dammsi/AnomalyDINO), on outputs recorded by
``evaluation/anomalydino_official.py`` from seeded random DINOv2 ViT-S weights loaded through the official hub path;
here the same state dict loads through zsad's ``timm:vit_small_patch14_dinov2:/path``.

Few-shot (``run_anomaly_detection``) with and without rotation and masking, and with k = 2 neighbours: patch
distance grids and full-size maps within 1e-5, image scores within 1e-6, masks identical. Batched zero-shot
(``calculate_cosine_distances``, ``dists_to_score``): patch distances within 1e-5, scores within 1e-6.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zsad
from zsad.methods.anomalydino.maps import mean_top

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "tests" / "data" / "anomalydino_official.npz"
sys.path.insert(0, str(ROOT / "evaluation"))

from anomalydino_official import CONFIGS, seeded_dinov2_state  # noqa: E402


@pytest.fixture(scope="module")
def recorded():
    data = np.load(RECORDED)
    return data, json.loads(str(data["meta"]))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The seeded weights written as the release's .pth, loaded by zsad by name (timm converts the layout)."""
    path = tmp_path_factory.mktemp("weights") / "dinov2_vits14_seeded.pth"
    torch.save(seeded_dinov2_state(), path)
    return f"timm:vit_small_patch14_dinov2:{path}"


def _backbone(name: str, size: int):
    from zsad.detector import backbone_for
    from zsad.methods.anomalydino.method import AnomalyDinoMethod

    return backbone_for(AnomalyDinoMethod, name, image_size=size, device="cpu", warn_random=False)


@pytest.fixture(scope="module")
def backbone(weights, recorded):
    return _backbone(weights, recorded[1]["shorter_side"])  # loaded once; the few-shot detectors share it


def _images(data, kind: str, count: int) -> list[Image.Image]:
    return [Image.fromarray(data[f"{kind}_{i}"]) for i in range(count)]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_few_shot_equals_the_official_code(recorded, backbone, config):
    data, meta = recorded
    rotation, masking, k = CONFIGS[config]
    refs, tests = _images(data, "ref", meta["references"]), _images(data, "test", meta["tests"])
    detector = zsad.create("anomalydino", backbone=backbone, references=refs,
                           rotation=rotation, masking=masking, neighbors=k, device="cpu", precision="fp32",
                           warn_random=False)
    method = detector.method
    assert method.bank.rows == sum(len(t) for t in method.originals.tokens) * (8 if rotation else 1)
    feats = method.extract(method.preprocess(tests))
    for i, image in enumerate(tests):
        assert feats.grids[i] == tuple(data[f"grid_shape_{i}"])
        if masking:
            np.testing.assert_array_equal(feats.masks[i], data[f"mask_{i}"])
            assert 0 < feats.masks[i].sum() < feats.masks[i].size  # the recorded masks are not trivial
        dist = method.patch_distances(feats.tokens[i], feats.masks[i])
        score, amap = method.raw_outputs(dist, feats.grids[i], image.size)
        grid = data[f"{config}/grid_{i}"]
        np.testing.assert_allclose(dist.numpy().reshape(grid.shape), grid, rtol=0, atol=1e-5)
        assert abs(score - float(data[f"{config}/score_{i}"])) <= 1e-6
        assert amap.shape == (image.size[1], image.size[0])
        np.testing.assert_allclose(amap, data[f"{config}/map_{i}"], rtol=0, atol=1e-5)
    # the public path gives the same raw numbers, calibrated
    for i, result in enumerate(detector.score(tests)):
        assert abs(result.extras["raw_score"] - float(data[f"{config}/score_{i}"])) <= 1e-6
        d0, p0 = result.extras["normal_score"], result.extras["normal_max"]
        assert result.raw.image_score == pytest.approx(result.extras["raw_score"] / (result.extras["raw_score"] + d0))
        expected = data[f"{config}/map_{i}"] / (data[f"{config}/map_{i}"] + p0)
        np.testing.assert_allclose(result.raw.anomaly_map, expected, rtol=0, atol=1e-5)


def test_batched_zero_shot_equals_the_official_code(recorded, weights):
    import dataclasses

    data, meta = recorded
    batch = _images(data, "batch", meta["batch"])
    detector = zsad.create("anomalydino", backbone=_backbone(weights, meta["batch_shorter_side"]), masking=True,
                           device="cpu", precision="fp32", warn_random=False)
    method = detector.method
    masked = method.extract(method.preprocess(batch))
    plain = dataclasses.replace(masked, masks=[None] * len(batch))
    for flag, feats in ((0, plain), (1, masked)):
        dists = method._distances(feats, range(len(batch)))
        for i in range(len(batch)):
            if flag:
                np.testing.assert_array_equal(feats.masks[i], data[f"batch_mask_{i}"])
            np.testing.assert_allclose(dists[i].numpy(), data[f"batched_{flag}/dists_{i}"], rtol=0, atol=1e-5)
            assert abs(mean_top(dists[i]) - float(data[f"batched_{flag}/score_{i}"])) <= 1e-6
    results = detector.score(batch)
    raw = [r.extras["raw_score"] for r in results]
    np.testing.assert_allclose(raw, [float(data[f"batched_1/score_{i}"]) for i in range(len(batch))], rtol=0,
                               atol=1e-6)
    order = np.argsort(raw)
    assert results[order[0]].image_score == 0.0 and results[order[-1]].image_score == 1.0  # min-max over the batch
