"""AUPRO: area under the per-region-overlap (PRO) versus false-positive-rate curve, up to an FPR limit.

PRO at a threshold is the mean, over every ground-truth region of every image, of the fraction of
that region's pixels scored at or above the threshold, so small defects weigh as much as large ones.
Regions are 8-connected components of the masks. FPR is taken over the defect-free pixels of all
images, so images without defects only ever change the FPR.

Two incompatible variants are published, and papers mix them up; both are offered, named explicitly:

* ``"mvtec"`` (default): the official MVTec AD evaluation script (``pro_curve_util.compute_pro`` and
  ``generic_util.trapezoid``). Every distinct score is a threshold; the curve is integrated with the
  trapezoid rule from FPR 0 to ``fpr_limit`` (interpolated at exactly ``fpr_limit``) and divided by
  ``fpr_limit``. A random detector scores about ``fpr_limit / 2``, a perfect one 1.
* ``"cflow"``: ``cal_pro_score`` as used by CFlow-AD, AnomalyCLIP, ADer and MuSc. 200 evenly spaced
  thresholds ``min + k (max - min) / 200``, ``k = 0..199``, binarised as ``score > t``; points with
  FPR < ``fpr_limit`` are kept, their FPRs min-max rescaled to [0, 1], then ``sklearn.metrics.auc``.
  The rescaling stretches whatever FPR range the coarse grid reached, so values are usually higher
  and are not comparable with ``"mvtec"``. Where the reference returns NaN or fails, this returns
  the highest kept PRO when all kept FPRs are equal (the curve is one vertical segment, e.g. a
  perfect or a constant map), and 0 when no point has FPR < ``fpr_limit``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.integrate import trapezoid
from scipy.ndimage import label
from sklearn.metrics import auc

from zsad.errors import UsageError
from zsad.metrics.pixel import check_maps_masks

AUPRO_VARIANTS: tuple[str, ...] = ("mvtec", "cflow")
CFLOW_STEPS = 200


def _regions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected ground-truth regions (label 0 = defect-free) and 1/size per label (0 for label 0)."""
    labeled, n = label(mask, structure=np.ones((3, 3), dtype=int))
    sizes = np.bincount(labeled.ravel(), minlength=n + 1)
    inv_size = np.zeros(n + 1, dtype=np.float64)
    inv_size[1:] = 1.0 / sizes[1:]
    return labeled, inv_size


def _area_to_limit(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under the curve for FPR in [0, limit], the end point linearly interpolated (MVTec's trapezoid)."""
    end = int(np.searchsorted(fpr, limit, side="right"))  # first point beyond the limit
    area = float(trapezoid(pro[:end], fpr[:end]))
    if fpr[end - 1] < limit:
        x0, x1, y0, y1 = fpr[end - 1], fpr[end], pro[end - 1], pro[end]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_limit) * (limit - x0)
    return area


def _top_ok_scores(pairs: list[tuple[np.ndarray, np.ndarray]], n_ok: int, fpr_limit: float) -> np.ndarray:
    """Defect-free scores, ascending, down to the first threshold whose FPR exceeds ``fpr_limit``.

    The curve beyond that threshold is never integrated, so only about ``fpr_limit`` of the pixels
    need sorting; ``np.partition`` finds the cut in linear time. Keeping ``floor(limit * n_ok) + 2``
    pixels guarantees FPR > limit at the cut despite float rounding.
    """
    ok = np.empty(n_ok, dtype=np.float32)
    i = 0
    for a, m in pairs:
        part = a[~m]
        ok[i : i + part.size] = part
        i += part.size
    k = n_ok - (int(np.floor(fpr_limit * n_ok)) + 2)
    if k > 0:
        ok.partition(k)
        ok = ok[ok >= ok[k]]
    ok.sort()
    return ok


def _aupro_mvtec(pairs: list[tuple[np.ndarray, np.ndarray]], n_ok: int, fpr_limit: float) -> float:
    """Official MVTec AUPRO, exact, from sorted scores and ``np.searchsorted`` (no per-threshold loop).

    The official curve has a point at every distinct score. Between two distinct defect scores PRO is
    constant, so those points lie on a horizontal line and the trapezoid area (and the interpolation at
    the limit) only needs its ends. Each distinct defect score d therefore gives two points:
    (FPR(> d), PRO(> d)) and (FPR(>= d), PRO(>= d)); a last point closes the curve at the lowest
    kept threshold, which is (1, 1) when nothing was cut.
    """
    ok = _top_ok_scores(pairs, n_ok, fpr_limit)
    cut = ok[0] if ok.size < n_ok else -np.inf
    scores, weights = [], []
    n_regions = 0
    for a, m in pairs:
        labeled, inv_size = _regions(m)
        n_regions += inv_size.size - 1
        keep = m & (a >= cut)
        scores.append(a[keep])
        weights.append(inv_size[labeled[keep]])
    s = np.concatenate(scores)
    if s.size == 0:
        return 0.0  # no defect pixel scores above the cut: PRO stays 0 until FPR has passed the limit
    order = np.argsort(s)[::-1]
    s = s[order]
    pro_all = np.cumsum(np.concatenate(weights)[order]) / n_regions
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # last defect pixel of each distinct score
    d, pro_ge = s[ends], pro_all[ends]
    pro_gt = np.concatenate(([0.0], pro_ge[:-1]))
    fpr_ge = (ok.size - np.searchsorted(ok, d, side="left")) / n_ok
    fpr_gt = (ok.size - np.searchsorted(ok, d, side="right")) / n_ok
    fpr = np.concatenate(([0.0], np.column_stack((fpr_gt, fpr_ge)).ravel(), [ok.size / n_ok]))
    pro = np.concatenate(([0.0], np.column_stack((pro_gt, pro_ge)).ravel(), pro_ge[-1:]))
    return _area_to_limit(fpr, pro, fpr_limit) / fpr_limit


def _aupro_cflow(pairs: list[tuple[np.ndarray, np.ndarray]], n_ok: int, fpr_limit: float) -> float:
    """Rescaled ``cal_pro_score`` AUPRO, from per-threshold histograms instead of 200 binarised copies.

    A pixel is positive at threshold k iff score > t_k, i.e. iff k < j with j = #{t_k < score};
    histogramming j per pixel and summing tails gives every threshold's counts in one pass.
    """
    lo = min(float(a.min()) for a, _ in pairs)
    hi = max(float(a.max()) for a, _ in pairs)
    thresholds = lo + (hi - lo) / CFLOW_STEPS * np.arange(CFLOW_STEPS)
    fp_hist = np.zeros(CFLOW_STEPS + 1, dtype=np.int64)
    tp_hist = np.zeros(CFLOW_STEPS + 1, dtype=np.float64)
    n_regions = 0
    for a, m in pairs:
        labeled, inv_size = _regions(m)
        n_regions += inv_size.size - 1
        j = np.searchsorted(thresholds, a.astype(np.float64), side="left")
        ok = labeled == 0
        fp_hist += np.bincount(j[ok], minlength=CFLOW_STEPS + 1)
        tp_hist += np.bincount(j[~ok], weights=inv_size[labeled[~ok]], minlength=CFLOW_STEPS + 1)
    fpr = np.cumsum(fp_hist[::-1])[::-1][1:] / n_ok  # FPR at threshold k = share of j > k
    pro = np.cumsum(tp_hist[::-1])[::-1][1:] / n_regions
    kept = fpr < fpr_limit
    if not kept.any():
        return 0.0
    fpr, pro = fpr[kept], pro[kept]
    spread = fpr.max() - fpr.min()
    if spread == 0:
        return float(pro.max())
    return float(auc((fpr - fpr.min()) / spread, pro))


def aupro(
    maps: Sequence[np.ndarray] | np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    fpr_limit: float = 0.3,
    variant: str = "mvtec",
) -> float:
    """AUPRO of HxW anomaly maps against same-size defect masks (nonzero = defect), in [0, 1].

    ``variant`` is ``"mvtec"`` (official MVTec AD script) or ``"cflow"`` (rescaled, AnomalyCLIP/ADer/MuSc);
    see the module docstring. Needs at least one defect region and one defect-free pixel.
    """
    if variant not in AUPRO_VARIANTS:
        raise UsageError(f"unknown AUPRO variant {variant!r}; choose one of {', '.join(AUPRO_VARIANTS)}")
    if not 0.0 < fpr_limit <= 1.0:
        raise UsageError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    pairs = check_maps_masks(maps, masks)
    n_defect = sum(int(np.count_nonzero(m)) for _, m in pairs)
    n_ok = sum(m.size for _, m in pairs) - n_defect
    if n_defect == 0:
        raise UsageError("AUPRO needs at least one ground-truth defect region; every mask is empty")
    if n_ok == 0:
        raise UsageError("AUPRO needs defect-free pixels to measure the false-positive rate; every mask is full")
    if variant == "mvtec":
        return _aupro_mvtec(pairs, n_ok, fpr_limit)
    return _aupro_cflow(pairs, n_ok, fpr_limit)
