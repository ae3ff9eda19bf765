"""Reference-guided scoring: the tiled search, the coreset, single images against k references, joint batches,
calibration, the command line and the few-shot draw."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

import zsad
from zsad.cli import main
from zsad.data.synthetic import make_sample
from zsad.methods.reference import Exclusion, build_bank, greedy_coreset, nearest_distance

TINY_DINO = "timm:tiny-dinov2:random"


@pytest.fixture(scope="module")
def grain():
    """Five good grain textures (references), one more good one, and one with a planted hole."""
    rng = np.random.default_rng(0)
    good = [make_sample("grain", None, size=224, rng=rng) for _ in range(6)]
    bad = make_sample("grain", "hole", size=224, rng=rng)
    return good, bad


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("tile", [7, 64, 1 << 20])
def test_tiled_nearest_neighbour_equals_brute_force(tile):
    refs, queries = _unit(3, 25, 16, seed=1), _unit(40, 16, seed=2)
    bank = build_bank(refs, dtype=torch.float32)
    got = nearest_distance(queries, bank, tile_elements=tile)
    brute = torch.cdist(queries, refs.reshape(-1, 16)).min(dim=1).values
    torch.testing.assert_close(got, brute, atol=1e-5, rtol=0)


def test_exclusions_equal_brute_force_with_masked_rows():
    refs = _unit(3, 25, 16, seed=3)
    bank = build_bank(refs, dtype=torch.float32)
    queries = refs[1]  # reference 1 against the others, then against itself away from each patch
    owner = torch.full((25,), 1, dtype=torch.int32)
    position = torch.arange(25, dtype=torch.int32)
    others = torch.cat([refs[0], refs[2]])
    loo = nearest_distance(queries, bank, exclude=Exclusion(owner, position, side=5), tile_elements=11)
    torch.testing.assert_close(loo, torch.cdist(queries, others).min(dim=1).values, atol=1e-5, rtol=0)
    near = nearest_distance(queries, bank, exclude=Exclusion(owner, position, side=5, radius=1), tile_elements=11)
    d = torch.cdist(queries, refs.reshape(-1, 16))
    for p in range(25):  # by hand: only own patches within one row and column of p are off limits
        allowed = [j for j in range(75) if not (j // 25 == 1 and abs((j % 25) // 5 - p // 5) <= 1
                                                and abs((j % 25) % 5 - p % 5) <= 1)]
        assert float(near[p]) == pytest.approx(float(d[p, allowed].min()), abs=1e-5)


def test_greedy_coreset_takes_the_farthest_points_first():
    points = torch.tensor([[0.0], [1.0], [10.0], [4.0], [9.5]])
    chosen = greedy_coreset(points.repeat(1, 8), 3, dims=8)  # a projection scales distances along one line
    assert chosen.tolist() == [0, 2, 3]  # start, farthest from 0, then farthest from {0, 10}
    assert greedy_coreset(points, 9).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("backbone", ["tiny-random", TINY_DINO])
@pytest.mark.parametrize("k", [1, 4])
def test_single_image_against_references_finds_the_planted_defect(grain, backbone, k):
    good, bad = grain
    detector = zsad.create("musc", backbone=backbone, image_size=224, warn_random=False,
                           references=[s.image for s in good[:k]])
    result = detector.score([bad.image])[0]
    assert result.extras["mode"] == "bank" and result.extras["references"] == k
    assert roc_auc_score(bad.mask.ravel(), result.anomaly_map.ravel()) >= 0.9
    inside, outside = result.anomaly_map[bad.mask].max(), result.anomaly_map[~bad.mask].mean()
    assert inside > outside
    normal = detector.score([good[5].image])[0]
    assert result.image_score > normal.image_score
    raw, d0 = result.extras["raw_max"], result.extras["normal_max"]
    assert result.image_score == pytest.approx(raw / (raw + d0))  # 0.5 at the worst held-out good image


def test_scores_do_not_depend_on_the_other_test_images(grain):
    good, bad = grain
    detector = zsad.create("clip", backbone="tiny-random", image_size=112, warn_random=False,
                           references=[s.image for s in good[:3]])
    alone = detector.score([bad.image])[0]
    together = detector.score([good[4].image, bad.image, good[5].image])[1]
    assert together.image_score == pytest.approx(alone.image_score, abs=1e-6)
    np.testing.assert_allclose(together.anomaly_map, alone.anomaly_map, atol=1e-6)


def test_calibration_is_the_worst_leave_one_out_reference(grain):
    good, _ = grain
    images = [s.image for s in good[:2]]
    detector = zsad.create("clip", backbone="tiny-random", image_size=112, warn_random=False, references=images)
    method = detector.method
    # by hand: reference 0 against reference 1's bank alone (and the other way), upsampled maxima
    peaks = []
    for own, other in ((0, 1), (1, 0)):
        alone = zsad.create("clip", backbone="tiny-random", image_size=112, warn_random=False,
                            references=[images[other]])
        peaks.append(alone.score([images[own]])[0].extras["raw_max"])
    assert method.normal_max == pytest.approx(max(peaks), rel=1e-5)


def test_musc_batch_joins_references_as_known_normal_images(grain):
    good, bad = grain
    detector = zsad.create("musc", backbone="tiny-random", image_size=224, warn_random=False,
                           references=[s.image for s in good[:4]])
    results = detector.score([good[4].image, bad.image, good[5].image])
    assert len(results) == 3 and {r.extras["mode"] for r in results} == {"joint"}
    assert results[1].image_score == max(r.image_score for r in results)
    assert roc_auc_score(bad.mask.ravel(), results[1].anomaly_map.ravel()) >= 0.9


def test_bank_is_on_the_device_in_the_compute_dtype_and_sized_as_documented(grain):
    good, _ = grain
    detector = zsad.create("musc", backbone="tiny-random", image_size=112, warn_random=False,
                           references=[s.image for s in good[:2]])
    method = detector.method
    assert {b.features.dtype for b in method.banks} == {torch.float32}
    assert all(b.features.device == method.device for b in method.banks)
    length, width = 8 * 8, 64  # 112 px at patch 14, tiny CLIP width 64
    assert method.bank_bytes == 2 * 3 * 4 * length * (width * 4 + 8)


def test_coreset_option_shrinks_the_bank(grain):
    good, bad = grain
    detector = zsad.create("clip", backbone="tiny-random", image_size=112, warn_random=False,
                           references=[s.image for s in good[:2]], coreset=0.25)
    assert all(b.features.shape[0] == math.ceil(0.25 * 2 * 64) for b in detector.method.banks)
    assert 0.0 <= detector.score([bad.image])[0].image_score < 1.0


def test_cli_scores_one_image_with_references_and_thresholds_from_good(grain, tmp_path):
    good, bad = grain
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, s in enumerate(good[:3]):
        s.image.save(refs / f"g{i}.png")
    (tmp_path / "good").mkdir()
    for i, s in enumerate(good[3:5]):
        s.image.save(tmp_path / "good" / f"h{i}.png")
    bad.image.save(tmp_path / "bad.png")
    out = tmp_path / "out"
    code = main(["score", str(tmp_path / "bad.png"), "--method", "musc", "--backbone", TINY_DINO, "--image-size",
                 "112", "--reference", str(refs), "--threshold-from", str(tmp_path / "good"), "--out", str(out),
                 "-q", "--no-maps"])
    assert code == 0
    rows = list(csv.DictReader(open(out / "results.csv", encoding="utf-8")))
    assert len(rows) == 1 and rows[0]["path"].endswith("bad.png")


def test_draw_references_is_seeded_and_takes_normal_train_images(tmp_path):
    from zsad.data.datasets import open_dataset
    from zsad.data.synthetic import make_dataset
    from zsad.methods.reference import draw_references

    make_dataset(tmp_path, categories=["grain"], n_train_good=6, n_test_good=1, n_test_defect=1, size=32)
    dataset = open_dataset(tmp_path)
    first = draw_references(dataset, "grain", 3, seed=1, draw="random")
    assert first == draw_references(dataset, "grain", 3, seed=1, draw="random")
    assert len(set(first)) == 3 and all("train" in p.parts and "good" in p.parts for p in first)
    assert {tuple(draw_references(dataset, "grain", 3, seed=s, draw="random")) for s in range(6)} != {tuple(first)}


def test_evaluate_with_reference_shots_over_two_seeds(tmp_path, capsys):
    import json

    from zsad.data.synthetic import make_dataset

    make_dataset(tmp_path / "data", categories=["grain"], n_train_good=4, n_test_good=2, n_test_defect=2,
                 defect_types=["hole"], size=112)
    out = tmp_path / "eval"
    code = main(["evaluate", "--data", str(tmp_path / "data"), "--method", "musc", "--backbone", TINY_DINO,
                 "--image-size", "112", "--reference-shots", "2", "--reference-seed", "0", "1", "--out", str(out),
                 "-q"])
    assert code == 0
    for seed in (0, 1):
        summary = json.loads((out / f"seed-{seed}" / "metrics.json").read_text())
        assert summary["references"] == {"shots": 2, "seed": seed, "draw": "slice"}
    seeds = json.loads((out / "metrics_seeds.json").read_text())
    assert seeds["seeds"] == [0, 1] and "image_auroc" in seeds["metrics"]
    assert "2-shot over seeds 0, 1" in capsys.readouterr().out
    again = main(["evaluate", "--data", str(tmp_path / "data"), "--method", "musc", "--backbone", TINY_DINO,
                  "--image-size", "112", "--reference-shots", "3", "--reference-seed", "0",
                  "--out", str(out / "seed-0"), "--resume", "-q"])
    assert again == 2  # another reference draw is not the same run


def test_reference_scoring_runs_and_records_musc_activation_for_every_method(tmp_path):
    """Reference scoring uses MuSc's features, so its backbone runs MuSc's activation whatever ``method`` is (on
    tiny-random, ``clip`` alone would run QuickGELU and ``musc`` GELU), and ``evaluate`` records the one that ran."""
    from zsad.data.synthetic import make_sample
    from zsad.detector import resolve_activation
    from zsad.evaluate import EvaluateConfig, _activation

    musc, clip = (resolve_activation(m, "tiny-random", 56) for m in ("musc", "clip"))
    assert musc != clip  # otherwise this test could not tell the two rules apart
    rng = np.random.default_rng(5)
    good = [make_sample("grain", None, size=56, rng=rng).image for _ in range(2)]
    for method in ("clip", "musc"):
        detector = zsad.create(method, backbone="tiny-random", image_size=56, device="cpu", precision="fp32",
                               warn_random=False, references=good)
        assert detector.backbone.activation == musc
        config = EvaluateConfig(data=tmp_path, out=tmp_path / "out", method=method, backbone="tiny-random",
                                image_size=56, reference_shots=2)
        assert _activation(config) == musc
    zero_shot = EvaluateConfig(data=tmp_path, out=tmp_path / "out", method="clip", backbone="tiny-random",
                               image_size=56)
    assert _activation(zero_shot) == clip
