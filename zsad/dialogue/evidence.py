"""What the detector found, in the words dialogue uses: the single source of truth for every answer.

The detector owns the evidence; language only states it (lvlm.md §0). Words are fixed by documented rules:

* **Confidence** of an image predicted anomalous, from its score ``s`` and threshold ``t``: the share of the
  way from the threshold to 1, ``m = (s - t) / (1 - t)``: ``m < 1/3`` "slightly", ``< 2/3`` "moderately", else
  "highly suspicious" (Anomaly-OV's three words, its cut-offs 0.3/0.7 on a probability re-based on the
  threshold so that "slightly" always means "just over the line"). Below the threshold: "not suspicious".
* **Size** of a region by the share of the image it covers (lvlm.md §4.5): tiny < 0.5 %, small < 2 %,
  medium < 10 %, large otherwise.
* **Position**: the 3x3 grid cell of the region's centroid ("top left" ... "bottom right").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from zsad.scoring.regions import find_regions
from zsad.types import AnomalyResult, Region

#: (upper bound of the area fraction, word), checked in order; larger is "large".
SIZE_BUCKETS: tuple[tuple[float, str], ...] = ((0.005, "tiny"), (0.02, "small"), (0.10, "medium"))
#: (upper bound of the margin m = (score - threshold) / (1 - threshold), word) for images over the threshold.
CONFIDENCE_BUCKETS: tuple[tuple[float, str], ...] = ((1 / 3, "slightly suspicious"), (2 / 3, "moderately suspicious"))
NOT_SUSPICIOUS = "not suspicious"
HIGHLY = "highly suspicious"


def size_word(area_fraction: float) -> str:
    for bound, word in SIZE_BUCKETS:
        if area_fraction < bound:
            return word
    return "large"


def confidence_word(score: float | None, threshold: float | None, anomalous: bool) -> str:
    if not anomalous:
        return NOT_SUSPICIOUS
    if score is None or threshold is None or threshold >= 1.0:
        return HIGHLY
    margin = (score - threshold) / (1.0 - threshold)
    for bound, word in CONFIDENCE_BUCKETS:
        if margin < bound:
            return word
    return HIGHLY


@dataclass(frozen=True)
class RegionEvidence:
    """One suspicious region: grid cell of its centroid, size word, area share, box ``(x0, y0, x1, y1)``."""

    cell: str
    size: str
    area_fraction: float
    bbox: tuple[int, int, int, int]
    peak_score: float | None = None


@dataclass(frozen=True)
class BatchEvidence:
    """How the image compares with the other images it was scored with (musc/auto look for anomalies repeated on
    several of them: a worn tool, a misplaced fixture). ``shared``: images sharing a repeated anomaly with this one,
    itself included (0: none found); ``place`` (3x3 cell) and ``pattern`` name it."""

    images: int
    shared: int = 0
    place: str | None = None
    pattern: str | None = None

    @classmethod
    def from_extras(cls, extras: dict[str, Any]) -> BatchEvidence | None:
        """From a result's extras (``group_images``, ``repeat_images``, ``repeat_place``, ``repeat_pattern``); None
        when the image was not compared with others."""
        if "group_images" not in extras:
            return None
        return cls(images=int(extras["group_images"]), shared=int(extras.get("repeat_images") or 0),
                   place=extras.get("repeat_place"), pattern=extras.get("repeat_pattern"))


@dataclass(frozen=True)
class Evidence:
    """Everything an answer may say about one image. Regions are largest first."""

    anomalous: bool
    score: float | None
    threshold: float | None
    confidence: str
    regions: tuple[RegionEvidence, ...]
    defect_type: str | None
    defect_prob: float | None
    class_name: str = "object"
    image_size: tuple[int, int] | None = None  # (width, height)
    #: every defect type's probability, most likely first, kept for normal images too (empty: no types named)
    type_probs: tuple[tuple[str, float], ...] = ()
    #: the anomaly map's maximum (None for mask evidence)
    map_peak: float | None = None
    #: the batch it was scored with and what repeats there (None: scored alone, or by a method that does not look)
    batch: BatchEvidence | None = None

    def cells(self) -> set[str]:
        """The grid cells holding a region."""
        return {r.cell for r in self.regions}

    def type_prob(self, kind: str) -> float | None:
        """The probability the detector gave defect type ``kind``, or None when it gave none."""
        return dict(self.type_probs).get(kind)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["regions"] = [asdict(r) for r in self.regions]
        out["type_probs"] = {k: p for k, p in self.type_probs}
        return out

    def to_text(self) -> str:
        """A compact hint for a language model, e.g. ``Detector score 0.82 (threshold 0.50), highly suspicious;
        1 region: top left, small (1.2 % of the image); likely type: scratch (p=0.64).``"""
        head = "Detector"
        if self.score is not None:
            head += f" score {self.score:.2f}"
            if self.threshold is not None:
                head += f" (threshold {self.threshold:.2f})"
        parts = [f"{head}, {self.confidence}"]
        if self.anomalous and self.regions:
            shown = self.regions[:4]
            places = "; ".join(f"{r.cell}, {r.size} ({100 * r.area_fraction:.1f} % of the image)" for r in shown)
            more = f" and {len(self.regions) - len(shown)} more" if len(self.regions) > len(shown) else ""
            parts.append(f"{len(self.regions)} region{'s' if len(self.regions) != 1 else ''}: {places}{more}")
        elif self.anomalous:
            parts.append("no localised region")
        else:
            parts.append("no defect found")
        if self.anomalous and self.defect_type:
            prob = f" (p={self.defect_prob:.2f})" if self.defect_prob is not None else ""
            parts.append(f"likely type: {self.defect_type}{prob}")
        if self.batch is not None and self.batch.shared > 1:
            at = f" at the {self.batch.place}" if self.batch.place else ""
            parts.append(f"the same anomaly{at} appears on {self.batch.shared - 1} other image(s) of the "
                         f"{self.batch.images} scored together")
        return "; ".join(parts) + "."


def _region_evidence(region: Region, with_peak: bool) -> RegionEvidence:
    return RegionEvidence(cell=region.cell, size=size_word(region.area_fraction),
                          area_fraction=float(region.area_fraction), bbox=tuple(int(v) for v in region.bbox),
                          peak_score=float(region.peak_score) if with_peak else None)


def evidence_from_result(result: AnomalyResult, class_name: str = "object") -> Evidence:
    """The evidence of a detector's result: its decision, score, regions and defect type."""
    regions = tuple(_region_evidence(r, with_peak=True) for r in result.regions) if result.pred_label else ()
    prob = result.defect_probs.get(result.defect_type) if result.defect_type else None
    probs = tuple(sorted(((str(k), float(v)) for k, v in result.defect_probs.items()), key=lambda kv: -kv[1]))
    return Evidence(
        anomalous=bool(result.pred_label), score=float(result.image_score), threshold=float(result.threshold),
        confidence=confidence_word(result.image_score, result.threshold, bool(result.pred_label)),
        regions=regions, defect_type=result.defect_type if result.pred_label else None,
        defect_prob=None if prob is None else float(prob), class_name=class_name, image_size=result.size,
        type_probs=probs, map_peak=float(np.max(result.anomaly_map)) if result.anomaly_map.size else None,
        batch=BatchEvidence.from_extras(result.extras),
    )


def evidence_from_mask(mask: np.ndarray, defect_type: str | None = None, class_name: str = "object",
                       min_area_fraction: float = 0.0) -> Evidence:
    """Ground-truth evidence from a defect mask (tests, training dialogues): 8-connected components, largest
    first (the detector's own :func:`find_regions`, uncapped); components smaller than ``min_area_fraction`` of
    the image are ignored. No score: certainty."""
    mask = np.asarray(mask).astype(bool)
    height, width = mask.shape
    found = find_regions(mask, mask.astype(np.float32), max_regions=mask.size)
    regions = tuple(_region_evidence(r, with_peak=False) for r in found if r.area_fraction >= min_area_fraction)
    anomalous = bool(regions)
    return Evidence(anomalous=anomalous, score=None, threshold=None,
                    confidence=HIGHLY if anomalous else NOT_SUSPICIOUS, regions=regions,
                    defect_type=defect_type if anomalous else None, defect_prob=None, class_name=class_name,
                    image_size=(width, height))
