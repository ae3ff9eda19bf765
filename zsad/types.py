"""Result types shared by every method, the CLI, evaluation, dialogue and the demo."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Names of the 3x3 grid cells, row-major from the top left. Used by regions and dialogue.
GRID_CELLS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)


@dataclass(frozen=True)
class Region:
    """One connected component of the predicted mask, in original-image pixels.

    ``bbox`` is ``(x0, y0, x1, y1)`` with exclusive ends; ``cell`` is the 3x3 grid cell of the centroid.
    """

    bbox: tuple[int, int, int, int]
    area_fraction: float
    centroid: tuple[float, float]
    cell: str
    peak_score: float
    mean_score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "bbox": list(self.bbox),
            "area_fraction": self.area_fraction,
            "centroid": [round(c, 2) for c in self.centroid],
            "cell": self.cell,
            "peak_score": self.peak_score,
            "mean_score": self.mean_score,
        }


@dataclass
class RawOutput:
    """What a method computes for one image, before any decision: no threshold, no label, no file path.

    Attributes:
        image_score: anomaly score; higher means more anomalous (probabilities in [0, 1] for every bundled method).
        anomaly_map: ``H x W`` float32 at the image's original resolution.
        method: name of the method that produced it.
        defect_probs: probabilities over the defect vocabulary (empty when the method names no defect).
        extras: method-specific numbers (e.g. the global and map scores before fusion).
    """

    image_score: float
    anomaly_map: np.ndarray
    method: str
    defect_probs: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def problem(self) -> str | None:
        """Why these numbers cannot be decided on (NaN or inf in the score or map), or None when they can."""
        bad = [what for what, finite in (("image score", np.isfinite(self.image_score)),
                                          ("anomaly map", bool(np.isfinite(self.anomaly_map).all())))
               if not finite]
        if not bad:
            return None
        return (f"the {' and '.join(bad)} of method '{self.method}' hold NaN or inf values (likely a low-precision "
                f"overflow: try --precision fp32)")


@dataclass
class AnomalyResult:
    """What a detector says about one image.

    Attributes:
        image_score: anomaly score in [0, 1]; higher means more anomalous.
        anomaly_map: ``H x W`` float32 in [0, 1] at the image's original resolution.
        pred_label: ``image_score >= threshold``.
        pred_mask: ``H x W`` bool, ``anomaly_map >= threshold``.
        threshold: the threshold used for both decisions.
        defect_type: most likely defect type, or None when the method does not name one.
        defect_probs: probabilities over the defect vocabulary.
        regions: connected components of ``pred_mask``, largest first.
        method: name of the method that produced the result.
        path: source file, when the image came from one.
        extras: method-specific values (e.g. the global and map scores before fusion).
        raw: the undecided outputs it was made from, so it can be decided again with other thresholds.
    """

    image_score: float
    anomaly_map: np.ndarray
    pred_label: bool
    pred_mask: np.ndarray
    threshold: float
    method: str
    defect_type: str | None = None
    defect_probs: dict[str, float] = field(default_factory=dict)
    regions: list[Region] = field(default_factory=list)
    path: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    raw: RawOutput | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the original image."""
        height, width = self.anomaly_map.shape
        return width, height

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable summary (no pixel arrays)."""
        width, height = self.size
        return {
            "path": self.path,
            "score": float(self.image_score),
            "label": int(self.pred_label),
            "threshold": float(self.threshold),
            "defect_type": self.defect_type,
            "defect_probs": {k: round(float(v), 6) for k, v in self.defect_probs.items()},
            "regions": [r.to_dict() for r in self.regions],
            "width": width,
            "height": height,
            "method": self.method,
            "extras": {k: v for k, v in self.extras.items() if isinstance(v, (int, float, str, bool, type(None)))},
        }
