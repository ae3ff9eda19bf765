"""AnomalyDINO in zsad: its own preparation, masking, search and scoring pieces against independent computations
(torchvision, OpenCV, brute force), the builder and command-line paths, calibration, the official shot slice, and a
planted defect found by both modes on the tiny random DINOv2 (equality with the official code itself:
``tests/test_anomalydino_official.py``)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score

import zsad
from zsad.cli import main
from zsad.data.synthetic import make_sample
from zsad.errors import UsageError
from zsad.methods.anomalydino.defaults import official_masking
from zsad.methods.anomalydino.maps import distance_map, mean_top
from zsad.methods.anomalydino.masking import foreground_mask
from zsad.methods.anomalydino.mutual import mutual_distances
from zsad.methods.anomalydino.preprocess import prepare, rotations
from zsad.methods.anomalydino.search import PatchBank, nearest_cosine

TINY = "timm:tiny-dinov2:random"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("size", [(97, 61), (40, 90), (56, 56), (448, 448), (300, 200)])
def test_prepare_is_torchvisions_resize_then_a_top_left_crop(size):
    from torchvision import transforms

    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    official = transforms.Compose([transforms.Resize(112, interpolation=transforms.InterpolationMode.BICUBIC,
                                                     antialias=True), transforms.ToTensor(),
                                   transforms.Normalize(MEAN, STD)])(image)
    got = prepare(image, 112, 14, MEAN, STD)
    h, w = official.shape[1:]
    assert got.shape == (3, h - h % 14, w - w % 14)
    torch.testing.assert_close(got, official[:, :got.shape[1], :got.shape[2]], rtol=0, atol=0)


def test_rotations_are_opencvs_about_the_centre_on_the_same_canvas():
    import cv2

    rng = np.random.default_rng(1)
    array = (rng.random((41, 60, 3)) * 255).astype(np.uint8)
    out = rotations(Image.fromarray(array))
    assert len(out) == 8 and all(o.size == (60, 41) for o in out)
    np.testing.assert_array_equal(np.asarray(out[0]), array)
    matrix = cv2.getRotationMatrix2D((30.0, 20.5), 135, 1.0)
    np.testing.assert_array_equal(np.asarray(out[3]), cv2.warpAffine(array, matrix, (60, 41), flags=cv2.INTER_LINEAR,
                                                                     borderMode=cv2.BORDER_REFLECT_101))


@pytest.mark.parametrize("seed", range(6))
def test_mask_morphology_is_opencvs_on_the_row_major_column(seed, monkeypatch):
    import cv2

    from zsad.methods.anomalydino import masking

    rng = np.random.default_rng(seed)
    grid = (7, 9)
    pc = rng.normal(0, 12, grid[0] * grid[1])
    monkeypatch.setattr(masking, "first_component", lambda tokens, seed=0: pc)
    got = foreground_mask(np.zeros((pc.size, 4)), grid)
    mask = (pc > 10)[:, None]
    centre = mask.reshape(grid)[1:5, 1:7]
    if centre.sum() <= centre.size * 0.35:
        mask = (-pc > 10)[:, None]
    kernel = np.ones((3, 3), np.uint8)
    mask = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    np.testing.assert_array_equal(got, mask.squeeze())


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("tile", [50, 1 << 20])
def test_nearest_cosine_equals_brute_force(k, tile):
    refs = [_unit(30, 16, seed=1), _unit(25, 16, seed=2), _unit(20, 16, seed=3)]
    bank = PatchBank.build(refs, [0, 1, 2], torch.device("cpu"))
    queries = torch.randn(40, 16, generator=torch.Generator().manual_seed(4)) * 3  # not unit: normalised inside
    dist = 1 - F.normalize(queries, dim=-1) @ torch.cat(refs).T
    torch.testing.assert_close(nearest_cosine(queries, bank, k=k, tile_elements=tile),
                               dist.topk(k, largest=False).values.clamp_min(0).mean(1), atol=1e-6, rtol=0)
    without = 1 - F.normalize(queries, dim=-1) @ torch.cat([refs[0], refs[2]]).T
    torch.testing.assert_close(nearest_cosine(queries, bank, k=k, exclude_owner=1, tile_elements=tile),
                               without.topk(k, largest=False).values.clamp_min(0).mean(1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [1, 2])
def test_ivf_probing_every_list_is_exact_and_fewer_lists_never_come_out_closer(k):
    centres = _unit(12, 16, seed=5)
    gen = torch.Generator().manual_seed(6)
    refs = [F.normalize(centres[torch.randint(0, 12, (200,), generator=gen)] + 0.2 * torch.randn(200, 16, generator=gen),
                        dim=1) for _ in range(3)]
    exact_bank = PatchBank.build(refs, [0, 1, 2], torch.device("cpu"))
    indexed = PatchBank.build(refs, [0, 1, 2], torch.device("cpu"))
    indexed.index(lists=10, probe=10)
    queries = F.normalize(centres[torch.randint(0, 12, (60,), generator=gen)] + 0.3 * torch.randn(60, 16, generator=gen),
                          dim=1)
    for owner in (None, 1):
        exact = nearest_cosine(queries, exact_bank, k=k, exclude_owner=owner)
        torch.testing.assert_close(nearest_cosine(queries, indexed, k=k, exclude_owner=owner), exact, atol=1e-6,
                                   rtol=0)
        indexed.probe = 2
        assert (nearest_cosine(queries, indexed, k=k, exclude_owner=owner) >= exact - 1e-6).all()
        indexed.probe = 10
    half = PatchBank.build(refs, [0, 1, 2], torch.device("cpu"), dtype=torch.float16)
    assert half.features.dtype == torch.float16
    torch.testing.assert_close(nearest_cosine(queries, half, k=k), nearest_cosine(queries, exact_bank, k=k),
                               atol=2e-3, rtol=0)


def test_search_option_selects_the_index(grain):
    good, bad = grain
    det = zsad.create("anomalydino", backbone=TINY, image_size=112, references=[s.image for s in good[:2]],
                      rotation=False, search="ivf", probe=1000, warn_random=False)
    assert det.method.bank.ivf is not None
    exact = zsad.create("anomalydino", backbone=TINY, image_size=112, references=[s.image for s in good[:2]],
                        rotation=False, search="exact", warn_random=False)
    assert exact.method.bank.ivf is None
    a, b = det.score([bad.image])[0], exact.score([bad.image])[0]  # every list probed: the exact result
    assert a.image_score == pytest.approx(b.image_score, abs=1e-6)


@pytest.mark.parametrize("tile", [37, 1 << 20])
def test_mutual_distances_equal_the_official_formula(tile):
    tokens = [torch.randn(n, 8, generator=torch.Generator().manual_seed(n)) for n in (800, 950, 1000, 700)]
    got = mutual_distances(tokens, range(4), tile_elements=tile)
    for i in range(4):
        q = F.normalize(tokens[i], dim=1)
        others = F.normalize(torch.cat([t for j, t in enumerate(tokens) if j != i]), dim=1)
        d = 1 - q @ others.T
        kth = torch.kthvalue(d, int(0.001 * d.shape[1]), dim=1).values[:, None]  # calculate_cosine_distances
        below = d < kth
        torch.testing.assert_close(got[i], (d * below).sum(1) / below.sum(1), atol=1e-6, rtol=0)
    small = mutual_distances([t[:10] for t in tokens], [0])[0]  # k < 2 (official: error or 0/0): the nearest
    q, o = F.normalize(tokens[0][:10], dim=1), F.normalize(torch.cat([t[:10] for t in tokens[1:]]), dim=1)
    torch.testing.assert_close(small, (1 - q @ o.T).min(1).values, atol=1e-6, rtol=0)


def test_mean_top_and_map_follow_the_official_helpers():
    import cv2
    from scipy.ndimage import gaussian_filter

    values = np.arange(250, dtype=np.float64)
    assert mean_top(values) == pytest.approx(np.mean(sorted(values, reverse=True)[:2]))
    assert mean_top(values[:50]) == 49.0  # 1 % rounds to 0: the maximum
    grid = np.random.default_rng(2).random((5, 7))
    official = gaussian_filter(cv2.resize(grid, (90, 61), interpolation=cv2.INTER_LINEAR), sigma=4)
    np.testing.assert_allclose(distance_map(grid, (90, 61)), official, atol=1e-6, rtol=0)


def test_official_masking_defaults():
    assert official_masking("mvtec", "screw") and not official_masking("mvtec", "bottle")
    assert official_masking("visa", "pcb1") and official_masking("visa", "candle")
    assert not official_masking("btad", "01") and not official_masking("folder", "screw")


@pytest.fixture(scope="module")
def grain():
    rng = np.random.default_rng(0)
    good = [make_sample("grain", None, size=(130, 97), rng=rng) for _ in range(5)]
    bad = make_sample("grain", "hole", size=(130, 97), rng=rng)
    return good, bad


@pytest.fixture(scope="module")
def few_shot(grain):
    good, _ = grain
    return zsad.create("anomalydino", backbone=TINY, image_size=112, references=[s.image for s in good[:3]],
                       warn_random=False)


def test_defaults_are_the_official_ones():
    from zsad.detector import default_model

    assert default_model("anomalydino", references=True) == ("timm:vit_small_patch14_dinov2.lvd142m", 448)
    assert default_model("anomalydino") == ("timm:vit_small_patch14_dinov2.lvd142m", 672)
    assert default_model("musc", references=True)[1] == 518


def test_few_shot_finds_the_planted_defect_and_is_calibrated(grain, few_shot):
    good, bad = grain
    method = few_shot.method
    assert method.bank.rows == 3 * 8 * 8 * 10  # 3 references x 8 rotations x (8 x 10 patches at 112 x 150)
    result, normal = few_shot.score([bad.image, good[4].image])
    alone = few_shot.score([bad.image])[0]  # one image at a time: the rest of the batch does not matter
    np.testing.assert_allclose(alone.anomaly_map, result.anomaly_map, atol=1e-6)
    assert result.anomaly_map.shape == bad.mask.shape
    assert roc_auc_score(bad.mask.ravel(), result.anomaly_map.ravel()) >= 0.9
    assert result.image_score > normal.image_score
    # 0.5 = the worst held-out reference: re-scoring a held-out reference against the others reaches it exactly
    d0, _ = method.calibration()
    worst = max(mean_top(method.patch_distances(t, None, exclude_owner=i)) for i, t in enumerate(
        method.originals.tokens))
    assert worst == pytest.approx(d0)
    assert normal.extras["raw_score"] / (normal.extras["raw_score"] + d0) == pytest.approx(normal.image_score)


def test_one_reference_calibrates_against_its_own_distant_patches(grain):
    good, bad = grain
    det = zsad.create("anomalydino", backbone=TINY, image_size=112, references=[good[0].image], rotation=False,
                      warn_random=False)
    d0, p0 = det.method.calibration()
    assert d0 > 0 and p0 > 0
    assert det.score([bad.image])[0].image_score > det.score([good[1].image])[0].image_score


def test_masking_zeroes_background_patches_and_an_empty_mask_is_dropped(grain, monkeypatch, caplog):
    from zsad.methods.anomalydino import features

    good, bad = grain
    det = zsad.create("anomalydino", backbone=TINY, image_size=112, references=[s.image for s in good[:2]],
                      masking=True, rotation=False, warn_random=False)
    half = np.arange(80) % 3 != 0
    monkeypatch.setattr(features, "foreground_mask", lambda tokens, grid: half)
    feats = det.method.extract(det.method.preprocess([bad.image]))
    dist = det.method.patch_distances(feats.tokens[0], feats.masks[0])
    assert (dist[~torch.from_numpy(half)] == 0).all() and (dist[torch.from_numpy(half)] > 0).all()
    assert det.score([bad.image])[0].extras["masking"] is True
    # the tiny random model's first component never passes 10: the official rule masks every patch; zsad keeps them
    monkeypatch.setattr(features, "foreground_mask", lambda tokens, grid: np.zeros(80, bool))
    assert det.method.extract(det.method.preprocess([bad.image])).masks == [None]
    assert "kept no patch" in caplog.text


def test_batched_zero_shot_finds_the_planted_defect(grain):
    good, bad = grain
    det = zsad.create("anomalydino", backbone=TINY, image_size=112, warn_random=False)
    results = det.score([s.image for s in good] + [bad.image])
    scores = [r.image_score for r in results]
    assert scores[-1] == 1.0 and max(scores[:-1]) < 1.0
    assert roc_auc_score(bad.mask.ravel(), results[-1].anomaly_map.ravel()) >= 0.9
    with pytest.raises(Exception, match="at least 2|too few|2 images"):
        det.score([bad.image])


def test_refusals_are_one_line():
    with pytest.raises(UsageError, match="timm DINOv2"):
        zsad.create("anomalydino", backbone="tiny-random", warn_random=False)
    with pytest.raises(UsageError, match="rotation"):
        zsad.create("anomalydino", backbone=TINY, image_size=112, rotation=False, warn_random=False)
    with pytest.raises(UsageError, match="ONNX"):
        zsad.create("anomalydino", backbone=TINY, runtime="onnx", export="/nonexistent", warn_random=False)


def test_cli_scores_against_references_with_thresholds_from_good(grain, tmp_path):
    good, bad = grain
    for folder, samples in (("good", good[:3]), ("more", good[3:]), ("test", [bad, good[4]])):
        (tmp_path / folder).mkdir()
        for i, s in enumerate(samples):
            s.image.save(tmp_path / folder / f"{i}.png")
    out = tmp_path / "out"
    code = main(["score", str(tmp_path / "test"), "--method", "anomalydino", "--reference", str(tmp_path / "good"),
                 "--threshold-from", str(tmp_path / "more"), "--backbone", TINY, "--image-size", "112",
                 "--foreground-mask", "on", "--no-rotation", "--out", str(out), "-q", "--no-maps"])
    assert code == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    scores = {r["path"].rsplit("/", 1)[-1]: float(r["score"]) for r in rows}
    assert scores["0.png"] > scores["1.png"]
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["extras"]["masking"] is True and record["extras"]["rotation"] is False
    assert record["threshold"] != 0.5  # from the good images


def test_official_shot_slice_and_random_draw(tmp_path):
    from zsad.data.datasets import open_dataset
    from zsad.data.synthetic import make_dataset
    from zsad.errors import DatasetError
    from zsad.methods.reference import draw_references

    make_dataset(tmp_path, categories=["grain"], n_train_good=7, n_test_good=1, n_test_defect=1, size=32)
    dataset = open_dataset(tmp_path)
    names = sorted(p.name for p in (tmp_path / "grain" / "train" / "good").iterdir())
    assert [p.name for p in draw_references(dataset, "grain", 3, 0)] == names[0:3]
    assert [p.name for p in draw_references(dataset, "grain", 3, 1)] == names[3:6]
    with pytest.raises(DatasetError, match="seed 2"):
        draw_references(dataset, "grain", 3, 2)
    drawn = draw_references(dataset, "grain", 3, 2, draw="random")
    assert drawn == draw_references(dataset, "grain", 3, 2, draw="random") and len(set(drawn)) == 3


def test_evaluate_few_shot_uses_the_slice_and_the_per_category_masking(tmp_path, capsys):
    from zsad.data.synthetic import make_dataset

    make_dataset(tmp_path / "data", categories=["grain"], n_train_good=4, n_test_good=2, n_test_defect=2, size=64)
    out = tmp_path / "out"
    code = main(["evaluate", "--data", str(tmp_path / "data"), "--method", "anomalydino", "--backbone", TINY,
                 "--image-size", "56", "--reference-shots", "2", "--reference-seed", "1", "--no-rotation",
                 "--out", str(out), "-q"])
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["references"] == {"shots": 2, "seed": 1, "draw": "slice"}
    marker = json.loads((out / "categories" / "grain.json").read_text())
    assert marker["config"]["reference_draw"] == "slice"

