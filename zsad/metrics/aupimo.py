"""AUPIMO: each anomalous image's overlap (TPR) averaged over a low false-positive-rate range of the normal images.

Definition (Bertoldo, Ameln, Vaidya, Akçay, "AUPIMO: Redefining Visual Anomaly Detection Benchmarks with High
Speed and Low Tolerance", BMVC 2024, arXiv:2401.01984; reference code jpcbertoldo/aupimo ``pimo_numpy.py`` and
anomalib ``metrics/pimo``). A pixel is flagged when ``score >= t``.

* Normal images are those with an empty mask. The shared FPR of a threshold is the mean over the normal images of
  each image's FPR (the paper's "mean per-image FPR"); with equal image sizes that is the FPR pooled over their
  pixels. Normal pixels of anomalous images play no part.
* The PIMO curve of an anomalous image is its TPR (share of its defect pixels flagged) against the shared FPR.
* AUPIMO = integral of TPR d(log FPR) over ``fpr_bounds`` (default ``(1e-5, 1e-4)``), divided by
  ``log(hi / lo)`` so a map flagging every defect pixel before any normal pixel scores 1. Normal images have no
  AUPIMO (NaN here; counted as undefined).

How it is computed, and how that differs from the reference. The reference evaluates 300,000 thresholds evenly
spaced between the normal maps' minimum and maximum, takes the ones whose shared FPR is closest to the bounds, and
integrates with the trapezoid rule on log FPR. Here every distinct normal score is a threshold, so the curve is
exact: the shared FPR only changes at normal scores, and between two consecutive ones it is constant (vertical
steps, no area). The normal scores needed are the top ``hi`` share or so: ``np.partition`` finds them in linear
time, one sort orders them and a weighted cumulative sum gives every threshold's shared FPR. Each anomalous image's
TPR at those thresholds is one ``np.searchsorted`` over its sorted defect scores. No Python loop runs over
thresholds; one runs over images. The integral over each FPR step is closed-form: across a step (x0, y0) ->
(x1, y1), TPR is linear in FPR (ROC interpolation: random tie-breaking between the step's ends), and
``int y dx/x = y0 log(w/u) + s ((w - u) - x0 log(w/u))`` with ``s = (y1 - y0)/(x1 - x0)``, over the part
``[u, w]`` of the step inside the bounds. For maps without ties between defect and normal scores every step is
flat (y0 = y1), so this equals the reference's limit as its number of thresholds grows; with ties (quantised
maps) the reference interpolates linearly in log FPR instead. Two more differences, both where the reference
warns or refuses: the bounds are met exactly (not the nearest of its thresholds), and when the normal images hold
too few pixels to reach the lower bound (fewer than about ``1 / lo``), the first step (FPR 0 up to the smallest
FPR a threshold reaches, ``lowest_fpr``) still counts, where the reference integrates from ``lowest_fpr`` only.
A constant map scores ``(hi - lo) / log(hi / lo)`` (about 3.9e-5 for the default bounds), the reference's
"random model" AUPIMO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zsad.errors import UsageError
from zsad.metrics.pixel import check_maps_masks

#: The paper's integration range of shared FPR (lower, upper).
DEFAULT_FPR_BOUNDS: tuple[float, float] = (1e-5, 1e-4)


@dataclass(frozen=True)
class AupimoResult:
    """Per-image AUPIMO (NaN for normal images) and the smallest positive shared FPR the normal images resolve."""

    values: np.ndarray
    fpr_bounds: tuple[float, float]
    lowest_fpr: float

    @property
    def resolves_lower_bound(self) -> bool:
        """False when the normal pixels are too few for any threshold to reach the lower FPR bound."""
        return self.lowest_fpr <= self.fpr_bounds[0]


def check_fpr_bounds(bounds: Sequence[float]) -> tuple[float, float]:
    """``(lo, hi)`` as floats with ``0 < lo < hi <= 1``, else a UsageError (a log-scale range needs lo > 0)."""
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise UsageError(f"AUPIMO FPR bounds must be two numbers LO HI, got {bounds!r}") from None
    if not (0.0 < lo < hi <= 1.0) or not (math.isfinite(lo) and math.isfinite(hi)):
        raise UsageError(f"AUPIMO FPR bounds must satisfy 0 < LO < HI <= 1, got ({lo}, {hi})")
    return lo, hi


def _shared_fpr_steps(normal: list[np.ndarray], hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Distinct normal scores ``v`` (descending) down to the first whose shared FPR exceeds ``hi``, and
    ``FPR(score >= v)`` at each: the only thresholds where the shared FPR changes, within reach of ``hi``.

    Each normal pixel weighs ``1 / (n_normal * its image's size)``, so a cumulative sum is the mean per-image FPR.
    Keeping ``floor(hi / w_min) + 2`` top pixels (``w_min`` the smallest weight) guarantees FPR > hi at the cut.
    """
    sizes = np.array([a.size for a in normal], dtype=np.int64)
    w_min = 1.0 / (len(normal) * int(sizes.max()))
    keep = int(math.floor(hi / w_min)) + 2
    total = int(sizes.sum())
    cut = -np.inf
    if keep < total:
        pooled = np.concatenate([a.ravel() for a in normal])
        k = total - keep
        pooled.partition(k)
        cut = pooled[k]
        del pooled
    scores = [a[a >= cut] for a in normal]
    weights = [np.full(s.size, 1.0 / (len(normal) * a.size)) for s, a in zip(scores, normal)]
    s = np.concatenate(scores)
    order = np.argsort(s, kind="stable")[::-1]
    s = s[order]
    fpr = np.cumsum(np.concatenate(weights)[order])
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # last pixel of each distinct score
    return s[last], np.minimum(fpr[last], 1.0)


def _log_area(x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``int y(x) dx / x`` over ``[x0, x1] ∩ [lo, hi]`` for y linear from (x0, y0) to (x1, y1), per row; 0 outside.

    With ``y = y0 + s (x - x0)``: ``int_u^w y/x dx = y0 log(w/u) + s ((w - u) - x0 log(w/u))``.
    """
    u = np.maximum(x0, lo)
    w = np.minimum(x1, hi)
    inside = w > u
    u, w = np.where(inside, u, 1.0), np.where(inside, w, 1.0)
    log_ratio = np.log(w / u)
    width = x1 - x0
    slope = np.divide(y1 - y0, width, out=np.zeros_like(width), where=width > 0)
    return np.where(inside, y0 * log_ratio + slope * ((w - u) - x0 * log_ratio), 0.0)


def aupimo(
    maps: Sequence[np.ndarray] | np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    fpr_bounds: Sequence[float] = DEFAULT_FPR_BOUNDS,
) -> AupimoResult:
    """AUPIMO of every image (HxW maps and same-size masks, nonzero = defect); NaN for images with empty masks.

    Needs at least one normal image (empty mask) and one anomalous image. See the module docstring.
    """
    lo, hi = check_fpr_bounds(fpr_bounds)
    pairs = check_maps_masks(maps, masks)
    anomalous = np.array([bool(m.any()) for _, m in pairs])
    if anomalous.all():
        raise UsageError("AUPIMO needs at least one normal image (empty mask) to measure the shared FPR")
    if not anomalous.any():
        raise UsageError("AUPIMO needs at least one anomalous image (non-empty mask)")
    thresholds, fpr_ge = _shared_fpr_steps([a for (a, _), bad in zip(pairs, anomalous) if not bad], hi)
    fpr_gt = np.concatenate(([0.0], fpr_ge[:-1]))  # FPR(score > v_k) = FPR(score >= v_{k-1})
    steps = (fpr_ge > lo) & (fpr_gt < hi)  # the steps that overlap the bounds
    thresholds, x0, x1 = thresholds[steps], fpr_gt[steps], fpr_ge[steps]
    cut = float(thresholds[-1])
    values = np.full(len(pairs), np.nan)
    for i in np.flatnonzero(anomalous):
        a, m = pairs[i]
        defect = a[m]
        n_defect = defect.size
        defect = np.sort(defect[defect >= cut])
        tpr_ge = (defect.size - np.searchsorted(defect, thresholds, side="left")) / n_defect
        tpr_gt = (defect.size - np.searchsorted(defect, thresholds, side="right")) / n_defect
        values[i] = float(np.sum(_log_area(x0, x1, tpr_gt, tpr_ge, lo, hi)))
    values[anomalous] = np.clip(values[anomalous] / math.log(hi / lo), 0.0, 1.0)
    return AupimoResult(values=values, fpr_bounds=(lo, hi), lowest_fpr=float(fpr_ge[0] if fpr_ge.size else 1.0))


def aupimo_stats(values: Sequence[float | None] | np.ndarray) -> dict[str, float | int | None]:
    """Mean, quartiles (numpy's linear interpolation) and counts of per-image AUPIMO values; NaN/None = undefined
    (normal images). The statistics are None when no value is defined."""
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    defined = v[np.isfinite(v)]
    stats: dict[str, float | int | None] = {"mean": None, "q1": None, "median": None, "q3": None}
    if defined.size:
        q1, median, q3 = np.quantile(defined, [0.25, 0.5, 0.75])
        stats.update(mean=float(defined.mean()), q1=float(q1), median=float(median), q3=float(q3))
    stats.update(n_images=int(defined.size), n_undefined=int(v.size - defined.size))
    return stats
