"""The field's detection and segmentation metrics (image AUROC/AP/F1-max, pixel AUROC/AP/F1-max, AUPRO, AUPIMO)
and their per-defect-type breakdown."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zsad.errors import UsageError
from zsad.metrics.aupimo import DEFAULT_FPR_BOUNDS, AupimoResult, aupimo, aupimo_stats
from zsad.metrics.breakdown import per_type_metrics, type_naming
from zsad.metrics.image import f1_max, image_ap, image_auroc
from zsad.metrics.pixel import pixel_ap, pixel_auroc, pixel_f1_max, pixel_metrics
from zsad.metrics.pro import AUPRO_VARIANTS, aupro

__all__ = [
    "AUPRO_VARIANTS",
    "DEFAULT_FPR_BOUNDS",
    "AupimoResult",
    "aupimo",
    "aupimo_stats",
    "aupro",
    "compute_all",
    "f1_max",
    "image_ap",
    "image_auroc",
    "per_type_metrics",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1_max",
    "pixel_metrics",
    "type_naming",
]


def compute_all(
    scores: np.ndarray | Sequence[float],
    labels: np.ndarray | Sequence[int],
    maps: Sequence[np.ndarray] | np.ndarray | None = None,
    masks: Sequence[np.ndarray] | np.ndarray | None = None,
    aupro_variant: str = "mvtec",
    with_thresholds: bool = False,
    aupimo_fpr_bounds: Sequence[float] | None = DEFAULT_FPR_BOUNDS,
) -> dict[str, float]:
    """Every standard metric in one dict, the shape the CLI writes to the metrics JSON.

    Keys: ``image_auroc, image_ap, image_f1_max`` and, when ``maps`` is given,
    ``pixel_auroc, pixel_ap, pixel_f1_max, aupro`` (AUPRO with ``fpr_limit=0.3``) and ``aupimo`` (the mean over
    the anomalous images; left out when ``aupimo_fpr_bounds`` is None or no image is normal). ``with_thresholds`` adds
    ``image_f1_threshold`` (and ``pixel_f1_threshold``): the F1-optimal decision thresholds, last.
    """
    best, threshold = f1_max(scores, labels)
    out = {"image_auroc": image_auroc(scores, labels), "image_ap": image_ap(scores, labels), "image_f1_max": best}
    found = {"image_f1_threshold": threshold}
    if maps is not None:
        if masks is None:
            raise UsageError("pixel metrics need ground-truth masks along with the anomaly maps")
        pixel = pixel_metrics(maps, masks, with_threshold=True)
        found["pixel_f1_threshold"] = pixel.pop("pixel_f1_threshold")
        out.update(pixel)
        out["aupro"] = aupro(maps, masks, variant=aupro_variant)
        if aupimo_fpr_bounds is not None and not all(np.any(m) for m in masks):  # AUPIMO needs a normal image
            out["aupimo"] = float(aupimo_stats(aupimo(maps, masks, aupimo_fpr_bounds).values)["mean"])
    return {**out, **found} if with_thresholds else out
