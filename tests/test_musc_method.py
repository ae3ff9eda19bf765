"""MuSc and auto as methods: behaviour that holds for any weights (mutual scoring needs no semantics)."""

import csv
from unittest import mock

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import zsad
from zsad.cli import main
from zsad.data.synthetic import make_sample
from zsad.errors import BatchTooSmallError

DEFECTS = ("hole", "contamination", "scratch", "color")


@pytest.fixture(scope="module")
def textures():
    rng = np.random.default_rng(0)
    return [make_sample("grain", None if i < 8 else DEFECTS[i - 8], size=224, rng=rng) for i in range(12)]


@pytest.fixture(scope="module")
def musc():
    return zsad.create("musc", backbone="tiny-random", image_size=224, batch_size=4)


def test_planted_defects_rank_first_and_maps_overlap_masks(musc, textures):
    results = musc.score([s.image for s in textures])
    labels = [int(s.defect_type is not None) for s in textures]
    assert roc_auc_score(labels, [r.image_score for r in results]) >= 0.8
    masks = np.concatenate([s.mask.ravel() for s in textures])
    maps = np.concatenate([r.anomaly_map.ravel() for r in results])
    assert roc_auc_score(masks, maps) >= 0.9
    for sample, result in zip(textures, results):
        assert result.anomaly_map.shape == sample.mask.shape
        assert 0.0 <= result.image_score <= 1.0


def test_permuting_images_permutes_results(musc, textures):
    images = [s.image for s in textures[:7]]
    forward = musc.score(images)
    order = [3, 0, 6, 1, 5, 2, 4]
    shuffled = musc.score([images[i] for i in order])
    for j, i in enumerate(order):
        assert shuffled[j].image_score == pytest.approx(forward[i].image_score, abs=1e-5)
        np.testing.assert_allclose(shuffled[j].anomaly_map, forward[i].anomaly_map, atol=1e-5)


def test_fewer_than_five_images_is_a_clear_error(musc, textures):
    with pytest.raises(BatchTooSmallError, match="at least 5 images.*'clip'"):
        musc.score([s.image for s in textures[:4]])


def test_auto_uses_clip_alone_below_five_and_fuses_above(textures):
    auto = zsad.create("auto", backbone="tiny-random", image_size=224)
    few = auto.score([s.image for s in textures[:3]])
    assert all(r.extras["used"] == "clip" for r in few)
    many = auto.score([s.image for s in textures])
    w = auto.method.config.musc_weight
    for r in many:
        assert r.extras["used"] == "musc+clip"
        assert r.image_score == pytest.approx(w * r.extras["musc_score"] + (1 - w) * r.extras["clip_score"], abs=1e-6)
    clip_scores = [r.extras["clip_score"] for r in many]
    assert min(clip_scores) == pytest.approx(0.0) and max(clip_scores) == pytest.approx(1.0)
    assert all(r.defect_probs for r in many)


def _write_group(folder, samples):
    folder.mkdir(parents=True)
    for i, s in enumerate(samples):
        s.image.save(folder / f"{i:03d}.png")


def test_cli_group_by_folder_scores_each_subfolder(tmp_path, textures):
    _write_group(tmp_path / "in" / "a", textures[:6])
    _write_group(tmp_path / "in" / "b", textures[6:])
    _write_group(tmp_path / "in" / "c", textures[:3])  # too few for MuSc: error rows, the run goes on
    out = tmp_path / "out"
    code = main(["score", str(tmp_path / "in"), "--method", "musc", "--group-by", "folder", "--out", str(out),
                 "--backbone", "tiny-random", "--image-size", "112", "-q"])
    assert code == 1
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 15
    by_group = {g: [r for r in rows if f"/{g}/" in r["path"]] for g in "abc"}
    assert all(r["error"] == "" for r in by_group["a"] + by_group["b"])
    assert all("at least 5 images" in r["error"] for r in by_group["c"])
    # each group is scored on its own: the same as scoring that folder alone
    alone = zsad.create("musc", backbone="tiny-random", image_size=112).score([s.image for s in textures[6:]])
    for row, result in zip(sorted(by_group["b"], key=lambda r: r["path"]), alone):
        assert float(row["score"]) == pytest.approx(result.image_score, abs=1e-5)


def test_cli_musc_with_too_few_images_exits_2(tmp_path, textures, capsys):
    _write_group(tmp_path / "in", textures[:3])
    code = main(["score", str(tmp_path / "in"), "--method", "musc", "--out", str(tmp_path / "o"),
                 "--backbone", "tiny-random", "--image-size", "56", "-q"])
    assert code == 2
    assert "--method clip" in capsys.readouterr().err


def test_cli_resume_rescores_a_partial_group_whole_without_duplicates(tmp_path, textures):
    _write_group(tmp_path / "in", textures[:6])
    out = tmp_path / "out"
    args = ["score", str(tmp_path / "in"), "--method", "musc", "--out", str(out), "--backbone", "tiny-random",
            "--image-size", "112", "-q"]
    assert main(args) == 0
    full = list(csv.DictReader((out / "results.csv").open()))
    lines = (out / "results.csv").read_text().splitlines(keepends=True)
    (out / "results.csv").write_text("".join(lines[:3]))  # killed after two rows
    assert main([*args, "--resume"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(r["path"] for r in rows) == sorted(r["path"] for r in full)
    by_path = {r["path"]: r["score"] for r in full}
    assert all(by_path[r["path"]] == r["score"] for r in rows)  # joint scores identical: the group was rescored whole


def test_fp16_msm_storage_is_reachable_and_close_to_fp32(musc, textures, tmp_path):
    """``msm_precision="fp16"`` (CLI ``--msm-precision fp16``) stores the LNAMD features in fp16 for MSM; on CPU the
    products stay exact fp32, so results differ from fp32 storage by the storage rounding only."""
    from zsad.methods.musc import msm

    images = [s.image for s in textures[:6]]
    half = zsad.create("musc", backbone=musc.backbone, msm_precision="fp16", batch_size=4)
    seen = []
    original = msm._lnamd_streamed

    def spy(tokens, r, device, chunk, dtype):
        seen.append(dtype)
        return original(tokens, r, device, chunk, dtype)

    with mock.patch.object(msm, "_lnamd_streamed", spy):
        low = half.score(images)
    assert seen and set(seen) == {torch.float16}
    exact = musc.score(images)
    for a, b in zip(low, exact):
        assert abs(a.image_score - b.image_score) < 2e-2
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=2e-2)
    with pytest.raises(zsad.ZsadError, match="msm_precision"):
        zsad.create("musc", backbone=musc.backbone, msm_precision="int8")
    assert main(["score", *[str(p) for p in _save(images, tmp_path)], "--method", "musc", "--backbone", "tiny-random",
                 "--image-size", "224", "--msm-precision", "fp16", "--out", str(tmp_path / "out"), "-q"]) == 0


def _save(images, folder):
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{i}.png")
        image.save(paths[-1])
    return paths
