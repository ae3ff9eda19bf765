"""Pixel-level metrics: every pixel of every image pooled into one binary problem, computed exactly.

Why not scikit-learn here: a VisA category holds ~1-2 x 10^9 pixels. ``roc_auc_score`` and
``average_precision_score`` copy scores to float64, argsort them (int64 indices) and keep float64
cumulative sums, i.e. ~40 bytes per pixel, tens of GiB. Subsampling would make the metric inexact.
Instead the defect and normal scores are pooled as two float32 arrays (4 bytes per pixel), each
sorted in place, and every quantity is counted with ``np.searchsorted``. The results equal
scikit-learn's up to float rounding (the tests check this on random data with ties).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zsad.errors import UsageError


def check_maps_masks(
    maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pair each HxW anomaly map (as float32) with its HxW mask (as bool; nonzero = defect).

    Sizes may differ between images but never between a map and its mask; the caller must
    resize and binarise soft masks first, since the metric is defined at the map's resolution.
    """
    if len(maps) != len(masks):
        raise UsageError(f"got {len(maps)} anomaly maps but {len(masks)} masks")
    if len(maps) == 0:
        raise UsageError("no anomaly maps given")
    pairs = []
    for i, (a, m) in enumerate(zip(maps, masks)):
        a = np.asarray(a, dtype=np.float32)
        m = np.asarray(m)
        if a.ndim != 2 or a.shape != m.shape:
            raise UsageError(f"image {i}: map shape {a.shape} and mask shape {m.shape} must be the same HxW")
        if not np.isfinite(a).all():
            raise UsageError(f"image {i}: anomaly map contains NaN or infinity")
        pairs.append((a, m if m.dtype == np.bool_ else m != 0))
    return pairs


def pooled_sorted_scores(
    maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """All normal-pixel scores and all defect-pixel scores, each a sorted (ascending) float32 array.

    Both classes must be present, as for the image metrics.
    """
    pairs = check_maps_masks(maps, masks)
    n_pos = sum(int(np.count_nonzero(m)) for _, m in pairs)
    n_neg = sum(m.size for _, m in pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise UsageError("pixel metrics need both normal and defect pixels; only one class is present")
    neg = np.empty(n_neg, dtype=np.float32)
    pos = np.empty(n_pos, dtype=np.float32)
    i_neg = i_pos = 0
    for a, m in pairs:
        p, n = a[m], a[~m]
        pos[i_pos : i_pos + p.size] = p
        neg[i_neg : i_neg + n.size] = n
        i_pos += p.size
        i_neg += n.size
    neg.sort()
    pos.sort()
    return neg, pos


def _counts_at_defect_scores(neg: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TP and FP of the rule ``score >= t`` at each distinct defect score t (ascending), and how many defects equal t.

    Only defect scores matter for AP and best F1: between two of them TP is constant and FP can only grow
    as t falls, so other thresholds never raise precision, recall or F1.
    """
    starts = np.flatnonzero(np.concatenate(([True], pos[1:] != pos[:-1])))
    t = pos[starts]
    tp = pos.size - starts
    fp = neg.size - np.searchsorted(neg, t, side="left")
    ties = np.diff(np.append(starts, pos.size))
    return t, tp, fp, ties


def _auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """Mann-Whitney form of AUROC: P(s_defect > s_normal) + P(s_defect = s_normal) / 2 (= trapezoidal ROC area)."""
    return auroc_from_sorted((neg,), pos)


def auroc_from_sorted(negatives: Sequence[np.ndarray], pos: np.ndarray) -> float:
    """Mann-Whitney AUROC of ``pos`` against the union of several *sorted* normal-score arrays.

    Lets a caller sort a shared pool once (e.g. every normal image of a category) and score several defect sets
    against it plus a small set of their own, as the per-defect-type breakdown does.
    """
    n_neg = sum(n.size for n in negatives)
    if pos.size == 0 or n_neg == 0:
        raise UsageError("pixel AUROC needs both normal and defect pixels; only one class is present")
    count = 0
    for neg in negatives:
        count += int(np.searchsorted(neg, pos, side="left").sum(dtype=np.int64))
        count += int(np.searchsorted(neg, pos, side="right").sum(dtype=np.int64))
    return float(count / (2.0 * pos.size * n_neg))


def _ap(neg: np.ndarray, pos: np.ndarray) -> float:
    """AP = sum over thresholds of (recall gain) x precision, as sklearn defines it."""
    _, tp, fp, ties = _counts_at_defect_scores(neg, pos)
    return float(np.sum(ties / pos.size * (tp / (tp + fp))))


def _f1_max(neg: np.ndarray, pos: np.ndarray) -> tuple[float, float]:
    """Best F1 = 2TP / (2TP + FP + FN) and its threshold; ties go to the lowest threshold, as in ``f1_max``."""
    t, tp, fp, _ = _counts_at_defect_scores(neg, pos)
    f1 = 2.0 * tp / (tp + fp + pos.size)
    best = int(np.argmax(f1))
    return float(f1[best]), float(t[best])


def pixel_auroc(maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray) -> float:
    """Pooled pixel AUROC, computed exactly in its Mann-Whitney form (ties count one half)."""
    return _auroc(*pooled_sorted_scores(maps, masks))


def pixel_ap(maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray) -> float:
    """Pooled pixel average precision, with sklearn's definition (no interpolation)."""
    return _ap(*pooled_sorted_scores(maps, masks))


def pixel_f1_max(
    maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray
) -> tuple[float, float]:
    """Best pooled pixel F1 over all thresholds (predict ``score >= t``) and the threshold reaching it."""
    return _f1_max(*pooled_sorted_scores(maps, masks))


def pixel_metrics(
    maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray, *, with_threshold: bool = False
) -> dict[str, float]:
    """``pixel_auroc``, ``pixel_ap`` and ``pixel_f1_max`` from a single pooling and sort, for whole-dataset runs;
    ``with_threshold`` adds ``pixel_f1_threshold``, the map value reaching the best F1 (flag ``map >= t``)."""
    neg, pos = pooled_sorted_scores(maps, masks)
    best, threshold = _f1_max(neg, pos)
    out = {"pixel_auroc": _auroc(neg, pos), "pixel_ap": _ap(neg, pos), "pixel_f1_max": best}
    if with_threshold:
        out["pixel_f1_threshold"] = threshold
    return out
