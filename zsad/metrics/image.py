"""Image-level metrics: one anomaly score and one 0/1 label per image, delegated to scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from zsad.errors import UsageError


def check_scores_labels(
    scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Validate image scores and labels up front, so users get a UsageError rather than a sklearn ValueError.

    Returns float64 scores and bool labels (True = anomalous). Both classes must be present,
    because AUROC, AP and F1 are undefined otherwise.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    raw = np.asarray(labels).ravel()
    if s.size == 0:
        raise UsageError("no image scores given")
    if s.size != raw.size:
        raise UsageError(f"got {s.size} scores but {raw.size} labels")
    if not np.isfinite(s).all():
        raise UsageError("image scores contain NaN or infinity")
    if raw.dtype != np.bool_ and not np.isin(raw, (0, 1)).all():
        raise UsageError("image labels must be 0 (normal) or 1 (anomalous)")
    y = raw.astype(bool)
    if y.all() or not y.any():
        raise UsageError("image metrics need both normal and anomalous images; only one class is present")
    return s, y


def f1_from_precision_recall(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """F1 = 2PR/(P+R) at every curve point, 0 where P+R = 0 (no true positive), instead of NaN."""
    denom = precision + recall
    return np.divide(2.0 * precision * recall, denom, out=np.zeros_like(denom, dtype=np.float64), where=denom > 0)


def image_auroc(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int]) -> float:
    """Area under the ROC curve of image scores (threshold-free ranking quality; 0.5 = chance)."""
    s, y = check_scores_labels(scores, labels)
    return float(roc_auc_score(y, s))


def image_ap(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int]) -> float:
    """Average precision, AP = sum_n (R_n - R_{n-1}) P_n over all distinct thresholds (sklearn's definition)."""
    s, y = check_scores_labels(scores, labels)
    return float(average_precision_score(y, s))


def f1_max(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int]) -> tuple[float, float]:
    """Best F1 over every threshold of the PR curve, and the threshold reaching it (predict ``score >= t``).

    This is anomalib's F1Max, the usual way to report F1 without a validation-chosen threshold.
    Among equal F1 values the lowest threshold wins.
    """
    s, y = check_scores_labels(scores, labels)
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = f1_from_precision_recall(precision[:-1], recall[:-1])  # the last point (P=1, R=0) has no threshold
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])
