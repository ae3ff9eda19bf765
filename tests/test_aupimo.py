"""AUPIMO on hand-made maps: values worked out by hand, a brute-force integration, invariances and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import trapezoid

from zsad.errors import UsageError
from zsad.metrics import DEFAULT_FPR_BOUNDS, aupimo, aupimo_stats, compute_all

LO, HI = DEFAULT_FPR_BOUNDS


def _ranked_normals(rng: np.random.Generator, n_images: int, shape: tuple[int, int]) -> list[np.ndarray]:
    """Normal maps holding every value k / n (k = 0..n-1) once, shuffled: the j-th highest score is (n - j) / n,
    so the shared FPR of ``score >= (n - j) / n`` is exactly j / n."""
    n = n_images * shape[0] * shape[1]
    values = (rng.permutation(n) / n).astype(np.float32)
    return list(values.reshape(n_images, *shape))


def _with_defect(shape: tuple[int, int], score: float, background: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros(shape, dtype=bool)
    mask[5:9, 7:12] = True
    amap = np.full(shape, background, dtype=np.float32)
    amap[mask] = score
    return amap, mask


def test_perfect_map_scores_one_and_normal_images_are_undefined():
    rng = np.random.default_rng(0)
    normal = [rng.uniform(0.0, 0.5, (300, 300)).astype(np.float32) for _ in range(3)]
    anomalous = [_with_defect((300, 300), 1.0, 0.25) for _ in range(2)]
    maps = [*normal, *(a for a, _ in anomalous)]
    masks = [np.zeros((300, 300), bool)] * 3 + [m for _, m in anomalous]
    found = aupimo(maps, masks)
    assert np.isnan(found.values[:3]).all()
    assert found.values[3:] == pytest.approx([1.0, 1.0], abs=1e-12)
    assert found.fpr_bounds == (LO, HI) and found.resolves_lower_bound


def test_a_defect_that_passes_only_above_the_upper_bound_scores_zero():
    rng = np.random.default_rng(1)
    normal = _ranked_normals(rng, 2, (300, 300))  # n = 180,000: FPR steps of 1 / n = 5.6e-6
    n = 180_000
    # just below the 36th highest normal score: flagged only once FPR >= 36 / n = 2e-4 > HI
    late = _with_defect((300, 300), (n - 36) / n - 0.5 / n)
    # just above the 10th highest normal score: flagged from FPR 9 / n = 5e-5 on, so TPR = 1 on (5e-5, 1e-4]
    mid = _with_defect((300, 300), (n - 10) / n + 0.5 / n)
    empty = np.zeros((300, 300), bool)
    found = aupimo([*normal, late[0], mid[0]], [empty, empty, late[1], mid[1]])
    assert found.values[2] == pytest.approx(0.0, abs=1e-12)
    # hand-worked: log(1e-4 / 5e-5) / log(1e-4 / 1e-5) = log 2 / log 10
    assert found.values[3] == pytest.approx(math.log(2) / math.log(10), rel=1e-9)


def _direct_aupimo(normal: list[np.ndarray], defect: np.ndarray, lo: float, hi: float, n_grid: int = 400_001) -> float:
    """Brute force for equal-size normal images without ties: at each FPR level x of a fine log grid, the
    highest-TPR rule with shared FPR <= x flags ``score > t`` where t is the (floor(x n) + 1)-th highest normal
    score; integrate TPR over log x with the trapezoid rule and divide by log(hi / lo)."""
    neg = np.sort(np.concatenate([m.ravel() for m in normal]))[::-1]
    x = np.geomspace(lo, hi, n_grid)
    t = neg[np.floor(x * neg.size).astype(np.int64)]
    d = np.sort(defect)
    tpr = 1.0 - np.searchsorted(d, t, side="right") / d.size
    return float(trapezoid(tpr, np.log(x)) / math.log(hi / lo))


@pytest.mark.parametrize("bounds", [DEFAULT_FPR_BOUNDS, (3e-5, 4e-4)])
def test_an_intermediate_case_matches_direct_integration_on_a_fine_grid(bounds):
    rng = np.random.default_rng(2)
    shape = (300, 340)
    normal = [rng.random(shape).astype(np.float32) for _ in range(3)]
    top = np.sort(np.concatenate([m.ravel() for m in normal]))[::-1]
    maps, masks = list(normal), [np.zeros(shape, bool)] * 3
    for spread in (20, 80, 400):  # defect scores among the top `spread` normal scores: partial overlap
        amap = rng.random(shape).astype(np.float32) * 0.9
        mask = np.zeros(shape, bool)
        mask[40:60, 30:55] = True
        amap[mask] = rng.uniform(top[spread], top[0], mask.sum()).astype(np.float32)
        maps.append(amap)
        masks.append(mask)
    found = aupimo(maps, masks, bounds)
    expected = [_direct_aupimo(normal, maps[i][masks[i]], *bounds) for i in (3, 4, 5)]
    assert 0.02 < min(expected) and max(expected) < 0.98  # really in between
    assert found.values[3:] == pytest.approx(expected, abs=1e-3)


def test_shared_fpr_is_the_mean_of_the_normal_images_fprs():
    """Worked by hand. Normal A (50,000 px): one pixel at 0.9; normal B (200,000 px): 20 pixels at 0.8. Shared FPR:
    thresholds in (0.8, 0.9] -> (1/50,000 + 0) / 2 = 1e-5; in (0, 0.8] -> 1e-5 + (20/200,000) / 2 = 6e-5.
    The defect pixels score 0.95 and 0.85: TPR is 0.5 up to FPR 1e-5, then 1. Over (5e-6, 1e-4):
    (0.5 log 2 + log 10) / log 20. (Pooling the normal pixels instead would give 1.)"""
    a = np.zeros((250, 200), np.float32)
    a[0, 0] = 0.9
    b = np.zeros((400, 500), np.float32)
    b.ravel()[:20] = 0.8
    x = np.zeros((10, 10), np.float32)
    x[0, :2] = (0.95, 0.85)
    mask = x > 0
    found = aupimo([a, b, x], [a > 5, b > 5, mask], (5e-6, 1e-4))
    assert found.values[2] == pytest.approx((0.5 * math.log(2) + math.log(10)) / math.log(20), rel=1e-9)


def test_a_constant_map_scores_the_random_model_value():
    """All scores tie: the curve is the straight line TPR = FPR, and int x dx/x over the bounds is hi - lo."""
    maps = [np.full((50, 60), 0.3, np.float32) for _ in range(3)]
    masks = [np.zeros((50, 60), bool), np.zeros((50, 60), bool), _with_defect((50, 60), 1.0)[1]]
    assert aupimo(maps, masks).values[2] == pytest.approx((HI - LO) / math.log(HI / LO), rel=1e-9)


def test_invariant_to_increasing_rescaling_of_the_maps():
    """Values on the grid k / 4096 so that 2x + 0.25 and x^2 are exact in float32 (no ties created or broken);
    the ties the grid has are kept on purpose (they make diagonal curve steps)."""
    rng = np.random.default_rng(3)
    maps = [(rng.integers(0, 4096, (120, 130)) / 4096).astype(np.float32) for _ in range(6)]
    masks = [np.zeros((120, 130), bool) for _ in range(6)]
    for i in (3, 4, 5):
        masks[i][20 + 10 * i : 45 + 10 * i, 30:60] = True
        maps[i][masks[i]] = rng.integers(4070 - 10 * i, 4096, masks[i].sum()) / 4096
    base = aupimo(maps, masks, (1e-4, 1e-2)).values
    assert 0.05 < np.nanmin(base) < np.nanmax(base) < 0.95
    for rescale in (lambda m: 2 * m + 0.25, lambda m: m**2):
        assert aupimo([rescale(m).astype(np.float32) for m in maps], masks, (1e-4, 1e-2)).values == pytest.approx(
            base, abs=1e-12, nan_ok=True)
    flipped = aupimo([(1 - m).astype(np.float32) for m in maps], masks, (1e-4, 1e-2)).values
    assert not np.allclose(flipped[3:], base[3:])  # a decreasing map is not the same detector


def test_few_normal_pixels_are_reported():
    rng = np.random.default_rng(4)
    maps = [rng.random((40, 40)).astype(np.float32) for _ in range(3)]  # 3,200 normal pixels: FPR >= 3.1e-4
    masks = [np.zeros((40, 40), bool), np.zeros((40, 40), bool), _with_defect((40, 40), 2.0)[1]]
    maps[2][masks[2]] = 2.0
    found = aupimo(maps[:2] + [maps[2]], masks)
    assert not found.resolves_lower_bound and found.lowest_fpr == pytest.approx(1 / 3200)
    assert found.values[2] == pytest.approx(1.0)  # the defect beats every normal pixel: TPR 1 from FPR 0 on


def test_stats_and_compute_all():
    stats = aupimo_stats([np.nan, 0.0, 0.5, 1.0, None])
    assert stats == {"mean": 0.5, "q1": 0.25, "median": 0.5, "q3": 0.75, "n_images": 3, "n_undefined": 2}
    assert aupimo_stats([np.nan])["mean"] is None
    maps = [np.zeros((30, 30), np.float32), _with_defect((30, 30), 1.0)[0]]
    masks = [np.zeros((30, 30), bool), _with_defect((30, 30), 1.0)[1]]
    assert compute_all([0.1, 0.9], [0, 1], maps, masks)["aupimo"] == pytest.approx(1.0)
    assert "aupimo" not in compute_all([0.1, 0.9], [0, 1], maps, masks, aupimo_fpr_bounds=None)


def test_errors():
    maps = [np.zeros((20, 20), np.float32)] * 2
    empty, full = np.zeros((20, 20), bool), _with_defect((20, 20), 1.0)[1]
    with pytest.raises(UsageError, match="normal image"):
        aupimo(maps, [full, full])
    with pytest.raises(UsageError, match="anomalous image"):
        aupimo(maps, [empty, empty])
    for bounds in [(0.0, 1e-4), (1e-4, 1e-5), (1e-5, 2.0), (1e-5,), ("a", "b")]:
        with pytest.raises(UsageError, match="FPR bounds"):
            aupimo(maps, [empty, full], bounds)
