"""Per-defect-type results: detection and segmentation metrics of each type, and how well the type is named.

A category's mean hides which defects a method misses; MVTec AD, MPDD and meta.json datasets name the type of each
anomalous image, so each type is scored alone against the category's normal images: image AUROC (that type's
images vs the normal ones), pixel AUROC and AUPRO (that type's images plus the normal images), and the mean of
its images' AUPIMO. Naming is scored with scikit-learn's accuracy and macro-F1 over the types a mapping could
translate into zsad's vocabulary (:mod:`zsad.metrics.type_map`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from zsad.errors import UsageError
from zsad.metrics.image import image_auroc
from zsad.metrics.pixel import auroc_from_sorted
from zsad.metrics.pro import aupro


def _or_none(compute, *args, **kwargs) -> float | None:
    """A metric's value, or None where it is undefined for this subset (one class only, no defect region)."""
    try:
        return float(compute(*args, **kwargs))
    except UsageError:
        return None


def per_type_metrics(
    types: Sequence[str],
    scores: np.ndarray | Sequence[float],
    labels: np.ndarray | Sequence[int],
    maps: Sequence[np.ndarray] | None = None,
    masks: Sequence[np.ndarray] | None = None,
    aupro_variant: str = "mvtec",
    aupimo_values: np.ndarray | Sequence[float] | None = None,
) -> dict[str, dict[str, float | int | None]]:
    """``{type: {n_images, image_auroc, pixel_auroc, aupro, aupimo}}`` for each type of the anomalous images.

    ``types[i]`` names image ``i``'s type (normal images' is ignored). Pixel metrics need ``maps`` and ``masks``;
    the normal images' pixels are sorted once and shared by every type. A metric a subset cannot define is None.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    kinds = np.asarray(types, dtype=object)
    normal = np.flatnonzero(~labels)
    shared_neg = None
    if maps is not None:
        if masks is None:
            raise UsageError("pixel metrics need ground-truth masks along with the anomaly maps")
        shared_neg = np.sort(np.concatenate([np.asarray(maps[i], np.float32).ravel() for i in normal])
                             if normal.size else np.empty(0, np.float32))
    out: dict[str, dict[str, float | int | None]] = {}
    for kind in sorted(set(kinds[labels])):
        members = np.flatnonzero(labels & (kinds == kind))
        chosen = np.concatenate([normal, members])
        row: dict[str, float | int | None] = {
            "n_images": int(members.size),
            "image_auroc": _or_none(image_auroc, scores[chosen], labels[chosen]),
        }
        if maps is not None and masks is not None:
            own = [(np.asarray(maps[i], np.float32), np.asarray(masks[i]) != 0) for i in members]
            pos = np.concatenate([a[m] for a, m in own])
            own_neg = np.sort(np.concatenate([a[~m] for a, m in own]))
            row["pixel_auroc"] = _or_none(auroc_from_sorted, (shared_neg, own_neg), pos)
            row["aupro"] = _or_none(aupro, [maps[i] for i in chosen], [masks[i] for i in chosen],
                                    variant=aupro_variant)
        if aupimo_values is not None:
            values = np.asarray(aupimo_values, dtype=np.float64)[members]
            values = values[np.isfinite(values)]
            row["aupimo"] = float(values.mean()) if values.size else None
        out[str(kind)] = row
    return out


def type_naming(true_types: Sequence[str], predicted: Sequence[str]) -> dict[str, float | int | list[str]]:
    """Accuracy and macro-F1 of predicted zsad types against the mapped true types (same length, no None).

    Macro-F1 averages the F1 of each true type present (``labels=`` those), so a type zsad predicts but the data
    never has costs recall elsewhere instead of adding a zero-F1 class of its own.
    """
    if len(true_types) != len(predicted):
        raise UsageError(f"got {len(true_types)} true types but {len(predicted)} predictions")
    if not true_types:
        raise UsageError("type naming needs at least one anomalous image with a mapped type")
    present = sorted(set(true_types))
    return {
        "accuracy": float(accuracy_score(true_types, predicted)),
        "macro_f1": float(f1_score(true_types, predicted, labels=present, average="macro", zero_division=0)),
        "n_images": len(true_types),
        "types": present,
    }
