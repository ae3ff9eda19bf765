"""Metrics against scikit-learn, against ports of the reference AUPRO scripts, and against hand-worked values."""

from __future__ import annotations

import bisect
import time

import numpy as np
import pytest
from scipy.ndimage import label
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from zsad.errors import UsageError
from zsad.metrics import (
    aupimo,
    aupro,
    compute_all,
    f1_max,
    image_ap,
    image_auroc,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
    pixel_metrics,
)

SEEDS = (0, 1, 2, 3, 4)


# ---------------------------------------------------------------- helpers


def _random_scores(rng: np.random.Generator, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scores loosely separated by label; rounded to a coarse grid when ``ties`` so many values repeat."""
    labels = rng.random(n) < 0.3
    labels[:2] = [True, False]
    scores = rng.normal(size=n) + labels * rng.uniform(0.0, 1.5)
    if ties:
        scores = np.round(scores, 1)
    return scores.astype(np.float32), labels.astype(int)


def _random_maps(
    rng: np.random.Generator, n_images: int, ties: bool, sizes: tuple[int, ...] = (24, 32, 17)
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Maps of varying HxW with rectangular defects (some images defect-free); defect pixels score higher."""
    maps, masks = [], []
    for i in range(n_images):
        h, w = sizes[i % len(sizes)], sizes[(i + 1) % len(sizes)]
        mask = np.zeros((h, w), dtype=bool)
        if i % 3:
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
                mask[y : y + rng.integers(1, 6), x : x + rng.integers(1, 6)] = True
        amap = rng.random((h, w)) + mask * rng.uniform(0.0, 0.8)
        if ties:
            amap = np.round(amap, 1)
        maps.append(amap.astype(np.float32))
        masks.append(mask)
    return maps, masks


def _official_mvtec_aupro(maps: list[np.ndarray], masks: list[np.ndarray], limit: float) -> float:
    """Port of MVTec AD's ``compute_pro`` + ``trapezoid(x_max=limit)`` / limit (full sort, per-pixel weights)."""
    fp_changes, pro_changes, n_ok, n_regions = [], [], 0, 0
    for m in masks:
        labeled, n = label(m, structure=np.ones((3, 3), dtype=int))
        n_regions += n
        ok = labeled == 0
        n_ok += ok.sum()
        change = np.zeros(m.shape)
        for k in range(n):
            region = labeled == k + 1
            change[region] = 1.0 / region.sum()
        fp_changes.append(ok.ravel().astype(np.uint32))
        pro_changes.append(change.ravel())
    s = np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in maps])
    idx = np.argsort(s)[::-1]
    s = s[idx]
    fprs = np.cumsum(np.concatenate(fp_changes)[idx]) / n_ok
    pros = np.cumsum(np.concatenate(pro_changes)[idx]) / n_regions
    keep = np.append(np.diff(s) != 0, True)
    x = np.concatenate(([0.0], fprs[keep], [1.0]))
    y = np.concatenate(([0.0], pros[keep], [1.0]))
    correction = 0.0
    if limit not in x:
        ins = bisect.bisect(x, limit)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (limit - x[ins - 1])
    inside = x <= limit
    x, y = x[inside], y[inside]
    return float((np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) + correction) / limit)


def _official_cflow_aupro(maps: list[np.ndarray], masks: list[np.ndarray], limit: float) -> float:
    """Port of ``cal_pro_score`` (AnomalyCLIP/ADer): a Python loop over 200 binarisations and every region."""
    lo = min(float(a.min()) for a in maps)
    hi = max(float(a.max()) for a in maps)
    pros, fprs = [], []
    for th in lo + (hi - lo) / 200 * np.arange(200):
        pro, fp, n_ok = [], 0, 0
        for a, m in zip(maps, masks):
            binary = a > th
            labeled, n = label(m, structure=np.ones((3, 3), dtype=int))
            for k in range(n):
                region = labeled == k + 1
                pro.append(binary[region].sum() / region.sum())
            fp += np.logical_and(~m, binary).sum()
            n_ok += (~m).sum()
        pros.append(np.mean(pro))
        fprs.append(fp / n_ok)
    pros, fprs = np.array(pros), np.array(fprs)
    kept = fprs < limit
    fprs = fprs[kept]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(auc(fprs, pros[kept]))


def _f1_at(scores: np.ndarray, labels: np.ndarray, t: float) -> float:
    """F1 of the rule ``score >= t``, computed directly."""
    pred = scores >= t
    tp = np.sum(pred & labels)
    return 2.0 * tp / (pred.sum() + labels.sum())


# ---------------------------------------------------------------- image metrics


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_image_metrics_match_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    scores, labels = _random_scores(rng, 300, ties)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert image_ap(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)

    best, t = f1_max(scores, labels)
    brute = max(_f1_at(scores, labels.astype(bool), u) for u in np.unique(scores))
    assert best == pytest.approx(brute, abs=1e-12)
    assert _f1_at(scores, labels.astype(bool), t) == pytest.approx(best, abs=1e-12)


def test_f1_max_guards_zero_precision_and_recall() -> None:
    # The top score is a normal image, so at that threshold P = R = 0; F1 there must be 0, not NaN.
    best, t = f1_max([0.9, 0.1, 0.2], [0, 1, 0])
    assert best == pytest.approx(0.5)  # threshold 0.1: everything flagged, P = 1/3, R = 1
    assert t == pytest.approx(0.1)


def test_image_metric_errors() -> None:
    with pytest.raises(UsageError, match="one class"):
        image_auroc([0.1, 0.2], [1, 1])
    with pytest.raises(UsageError, match="one class"):
        f1_max([0.1, 0.2], [0, 0])
    with pytest.raises(UsageError):
        image_ap([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(UsageError):
        image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(UsageError):
        image_auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(UsageError):
        image_auroc([], [])


# ---------------------------------------------------------------- pixel metrics


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_pixel_metrics_match_sklearn_on_flattened_pixels(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    maps, masks = _random_maps(rng, 9, ties)
    flat = np.concatenate([a.ravel() for a in maps])
    truth = np.concatenate([m.ravel() for m in masks])

    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(truth, flat), abs=1e-10)
    assert pixel_auroc(maps, masks) == pytest.approx(image_auroc(flat, truth), abs=1e-10)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(truth, flat), abs=1e-10)
    assert pixel_ap(maps, masks) == pytest.approx(image_ap(flat, truth), abs=1e-10)

    best, t = pixel_f1_max(maps, masks)
    assert best == pytest.approx(f1_max(flat, truth)[0], abs=1e-10)
    assert _f1_at(flat, truth, t) == pytest.approx(best, abs=1e-10)
    precision, recall, _ = precision_recall_curve(truth, flat)
    with np.errstate(invalid="ignore"):
        sk_best = np.nanmax(2 * precision * recall / (precision + recall))
    assert best == pytest.approx(sk_best, abs=1e-10)

    together = pixel_metrics(maps, masks)
    assert together == {
        "pixel_auroc": pixel_auroc(maps, masks),
        "pixel_ap": pixel_ap(maps, masks),
        "pixel_f1_max": best,
    }


def test_pixel_metrics_accept_uint8_masks_and_a_stacked_array() -> None:
    rng = np.random.default_rng(7)
    maps = rng.random((4, 8, 8)).astype(np.float32)
    masks = np.zeros((4, 8, 8), dtype=np.uint8)
    masks[1, 2:5, 2:5] = 255
    expected = roc_auc_score(masks.ravel() > 0, maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_pixel_metric_errors() -> None:
    a = np.zeros((4, 4), dtype=np.float32)
    with pytest.raises(UsageError, match="one class"):
        pixel_auroc([a], [np.zeros((4, 4), bool)])
    with pytest.raises(UsageError, match="shape"):
        pixel_ap([a], [np.zeros((4, 5), bool)])
    with pytest.raises(UsageError):
        pixel_f1_max([a, a], [np.ones((4, 4), bool)])
    with pytest.raises(UsageError):
        pixel_auroc([], [])


# ---------------------------------------------------------------- AUPRO, hand-worked values


def _two_regions() -> np.ndarray:
    """10x10 mask with a 2x2 region (4 px) and a separate 4x4 region (16 px); 80 defect-free pixels."""
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:2, 0:2] = True
    mask[5:9, 5:9] = True
    return mask


@pytest.mark.parametrize("variant", ["mvtec", "cflow"])
def test_aupro_perfect_detector_is_one(variant: str) -> None:
    mask = _two_regions()
    # Regions at different scores (1.0 and 0.5), all normal pixels at 0: both regions fully found at FPR 0.
    amap = np.where(mask, 0.5, 0.0).astype(np.float32)
    amap[0:2, 0:2] = 1.0
    assert aupro([amap], [mask], variant=variant) == pytest.approx(1.0)


@pytest.mark.parametrize("covered", ["small", "large"])
def test_aupro_two_regions_one_covered(covered: str) -> None:
    mask = _two_regions()
    amap = np.zeros((10, 10), dtype=np.float32)
    if covered == "small":
        amap[0:2, 0:2] = 1.0
    else:
        amap[5:9, 5:9] = 1.0
    # Thresholds: t=1 -> (FPR 0, PRO (1+0)/2 = 0.5); t=0 -> (1, 1). Curve (0,0),(0,0.5),(1,1).
    # At FPR 0.3 the line gives PRO 0.5 + 0.5*0.3 = 0.65; area = 0.3*(0.5+0.65)/2 = 0.1725; /0.3 = 0.575.
    # Regions weigh equally, so covering the 4 px or the 16 px region gives the same value
    # (pixel recall would be 0.2 or 0.8).
    assert aupro([amap], [mask]) == pytest.approx(0.575)


def test_aupro_one_region_with_false_positives() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[3:7, 3:7] = True  # one 16 px region, 84 defect-free pixels
    amap = np.where(mask, 0.5, 0.0).astype(np.float32)
    amap.ravel()[np.flatnonzero(~mask.ravel())[:21]] = 0.9  # 21/84 = 25% of normal pixels above the defect
    # t=0.9 -> (0.25, 0); t=0.5 -> (0.25, 1); t=0 -> (1, 1). Area up to 0.3 = 0.05 * 1; /0.3 = 1/6.
    assert aupro([amap], [mask]) == pytest.approx(1 / 6)

    # Adding a defect-free 12x7 image (84 px, a different size) changes only the FPR, never the PRO:
    normal_mask = np.zeros((12, 7), dtype=bool)
    # scored 0 (below everything): FPR halves, t=0.9 -> (0.125, 0), t=0.5 -> (0.125, 1): (0.3-0.125)/0.3.
    low = np.zeros((12, 7), dtype=np.float32)
    assert aupro([amap, low], [mask, normal_mask]) == pytest.approx(0.175 / 0.3)
    # scored 1 (above everything): at t=1 FPR is already 84/168 = 0.5 > 0.3 with PRO 0, so AUPRO = 0.
    high = np.ones((12, 7), dtype=np.float32)
    assert aupro([amap, high], [mask, normal_mask]) == pytest.approx(0.0)


def test_aupro_constant_maps() -> None:
    rng = np.random.default_rng(0)
    _, masks = _random_maps(rng, 6, ties=False)
    maps = [np.full(m.shape, 0.3, dtype=np.float32) for m in masks]
    # One threshold: everything flagged -> curve (0,0),(1,1); PRO(0.3) = 0.3; area 0.045; /0.3 = 0.15.
    assert aupro(maps, masks, variant="mvtec") == pytest.approx(0.15)
    # cflow: every threshold equals the constant and ``score > t`` flags nothing: PRO 0 everywhere.
    assert aupro(maps, masks, variant="cflow") == pytest.approx(0.0)


def test_aupro_variants_differ_as_documented() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:2, 0:2] = True  # one 4 px region, 96 defect-free pixels
    amap = np.where(mask, 0.8, 0.0).astype(np.float32)
    normal = np.flatnonzero(~mask.ravel())
    amap.ravel()[normal[:10]] = 0.9
    amap.ravel()[normal[10:20]] = 0.1
    # mvtec: t=0.9 -> (10/96, 0); t=0.8 -> (10/96, 1); t=0.1 -> (20/96, 1): area (0.3 - 10/96) * 1, /0.3.
    assert aupro([amap], [mask], variant="mvtec") == pytest.approx((0.3 - 10 / 96) / 0.3)
    # cflow: grid thresholds only see FPR 20/96 (PRO 1), 10/96 (PRO 1), 10/96 (PRO 0); rescaling maps
    # 10/96 -> 0 and 20/96 -> 1, so the whole [0,1] axis sits at PRO 1: an inflated 1.0.
    assert aupro([amap], [mask], variant="cflow") == pytest.approx(1.0)


def test_aupro_random_detector_is_half_the_limit() -> None:
    rng = np.random.default_rng(3)
    masks = []
    for _ in range(20):
        m = np.zeros((64, 64), dtype=bool)
        for _ in range(3):
            y, x = rng.integers(0, 50, size=2)
            m[y : y + rng.integers(4, 14), x : x + rng.integers(4, 14)] = True
        masks.append(m)
    maps = [rng.random(m.shape).astype(np.float32) for m in masks]
    # PRO ~ FPR on the diagonal: area 0.3^2/2, divided by 0.3 = 0.15.
    assert aupro(maps, masks) == pytest.approx(0.15, abs=0.01)
    assert aupro(maps, masks, fpr_limit=0.1) == pytest.approx(0.05, abs=0.01)


# ---------------------------------------------------------------- AUPRO against the reference scripts


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_mvtec_matches_official_script(seed: int, ties: bool, limit: float) -> None:
    rng = np.random.default_rng(seed)
    maps, masks = _random_maps(rng, 8, ties)
    assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(_official_mvtec_aupro(maps, masks, limit), abs=1e-9)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_aupro_cflow_matches_cal_pro_score(seed: int) -> None:
    rng = np.random.default_rng(seed)
    maps, masks = _random_maps(rng, 6, ties=seed == 2)
    expected = _official_cflow_aupro(maps, masks, 0.3)
    assert aupro(maps, masks, variant="cflow") == pytest.approx(expected, abs=1e-9)


def test_aupro_errors() -> None:
    a = np.zeros((5, 5), dtype=np.float32)
    with pytest.raises(UsageError, match="region"):
        aupro([a, a], [np.zeros((5, 5), bool), np.zeros((5, 5), bool)])
    with pytest.raises(UsageError, match="defect-free"):
        aupro([a], [np.ones((5, 5), bool)])
    mask = _two_regions()
    amap = np.zeros((10, 10), dtype=np.float32)
    with pytest.raises(UsageError, match="variant"):
        aupro([amap], [mask], variant="anomalib")
    with pytest.raises(UsageError, match="fpr_limit"):
        aupro([amap], [mask], fpr_limit=0.0)
    with pytest.raises(UsageError, match="shape"):
        aupro([amap], [mask[:5]])


# ---------------------------------------------------------------- compute_all and speed


def test_compute_all_keys() -> None:
    rng = np.random.default_rng(5)
    maps, masks = _random_maps(rng, 6, ties=False)
    labels = [int(m.any()) for m in masks]
    scores = [float(a.max()) for a in maps]
    assert list(compute_all(scores, labels)) == ["image_auroc", "image_ap", "image_f1_max"]
    full = compute_all(scores, labels, maps, masks, aupro_variant="cflow")
    assert list(full) == [
        "image_auroc",
        "image_ap",
        "image_f1_max",
        "pixel_auroc",
        "pixel_ap",
        "pixel_f1_max",
        "aupro",
        "aupimo",
    ]
    assert full["aupro"] == aupro(maps, masks, variant="cflow")
    assert full["aupimo"] == np.nanmean(aupimo(maps, masks).values)
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in full.values())
    with_t = compute_all(scores, labels, maps, masks, aupro_variant="cflow", with_thresholds=True)
    assert list(with_t)[-2:] == ["image_f1_threshold", "pixel_f1_threshold"]
    assert with_t["image_f1_threshold"] == f1_max(scores, labels)[1]
    assert with_t["pixel_f1_threshold"] == pixel_f1_max(maps, masks)[1]
    assert {k: with_t[k] for k in full} == full
    with pytest.raises(UsageError, match="masks"):
        compute_all(scores, labels, maps)


def test_moderately_large_input_is_fast() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((200, 256, 256), dtype=bool)
    masks[::2, 100:140, 60:90] = True
    maps = rng.random((200, 256, 256), dtype=np.float32) + masks * np.float32(0.3)
    start = time.perf_counter()
    found = compute_all(maps.max(axis=(1, 2)), masks.any(axis=(1, 2)), list(maps), list(masks))  # with AUPIMO
    aupro(list(maps), list(masks), variant="cflow")
    assert time.perf_counter() - start < 10.0  # ~13M pixels; a couple of seconds on a laptop
    assert 0.0 <= found["aupimo"] <= 1.0
