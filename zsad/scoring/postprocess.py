"""Turning a method's raw numbers into an :class:`AnomalyResult` the same way for every method."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from zsad.scoring.regions import find_regions
from zsad.types import AnomalyResult

#: Default decision threshold on image scores and map values, both probabilities of "anomalous" in [0, 1].
DEFAULT_THRESHOLD = 0.5


def build_result(
    *,
    image_score: float,
    anomaly_map: np.ndarray,
    threshold: float,
    method: str,
    pixel_threshold: float | None = None,
    defect_probs: Mapping[str, float] | None = None,
    path: str | None = None,
    extras: Mapping[str, Any] | None = None,
) -> AnomalyResult:
    """Clip to [0, 1], threshold the image score and the map, and describe the mask's regions.

    The map is thresholded with ``pixel_threshold`` when given, else with the same ``threshold``.

    The defect type is only named for an image predicted anomalous; the probabilities are always kept.
    """
    score = float(np.clip(image_score, 0.0, 1.0))
    amap = np.clip(np.nan_to_num(anomaly_map.astype(np.float32, copy=False)), 0.0, 1.0)
    label = score >= threshold
    mask = amap >= (threshold if pixel_threshold is None else pixel_threshold)
    probs = dict(defect_probs or {})
    defect_type = max(probs, key=probs.get) if (probs and label) else None
    return AnomalyResult(
        image_score=score,
        anomaly_map=amap,
        pred_label=bool(label),
        pred_mask=mask,
        threshold=float(threshold),
        method=method,
        defect_type=defect_type,
        defect_probs=probs,
        regions=find_regions(mask, amap),
        path=path,
        extras=dict(extras or {}),
    )
