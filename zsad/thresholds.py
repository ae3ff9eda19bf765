"""Decisions without defect examples: thresholds taken from images known to be good.

A quality engineer often has a handful of good parts and no defective ones. Scoring the good images and
flagging whatever goes above what they reach gives a threshold with a known false-alarm rate: with quantile
``q``, about ``1 - q`` of normal images are flagged. Decisions are "strictly above the quantile" (the threshold
is the next float after it, because results flag ``score >= threshold``), so with ``q = 1`` no good image is flagged. The image decision uses the quantile of the good images'
scores; the pixel mask uses the quantile of their map maxima, so a good image's mask is (almost always) empty.

Transductive methods (musc, auto) give batch-relative scores, so the good images must be scored in the same
batch as the images they judge: :func:`zsad.cli` appends them to every group and drops their rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zsad.errors import UsageError
from zsad.scoring.postprocess import build_result
from zsad.types import AnomalyResult

if TYPE_CHECKING:
    from PIL import Image

    from zsad.detector import Detector

DEFAULT_GOOD_QUANTILE = 0.99


@dataclass(frozen=True)
class GoodThresholds:
    """Thresholds learned from known-good images: ``image`` on image scores, ``pixel`` on map values."""

    image: float
    pixel: float
    quantile: float
    n_good: int


def thresholds_from_good(good: Sequence[AnomalyResult], quantile: float = DEFAULT_GOOD_QUANTILE) -> GoodThresholds:
    """The ``quantile`` of the good images' scores (image decision) and of their map maxima (pixel mask)."""
    if not 0.0 <= quantile <= 1.0:
        raise UsageError(f"quantile must be in [0, 1], got {quantile}")
    if not good:
        raise UsageError("a threshold from good images needs at least one known-good image")
    scores = np.array([r.image_score for r in good], dtype=np.float64)
    peaks = np.array([float(r.anomaly_map.max()) for r in good], dtype=np.float64)
    image = np.nextafter(np.quantile(scores, quantile), np.inf)
    # maps are float32 and numpy compares them with a Python float in float32: step in float32
    pixel = np.nextafter(np.float32(np.quantile(peaks, quantile)), np.float32(np.inf))
    return GoodThresholds(image=float(image), pixel=float(pixel), quantile=quantile, n_good=len(good))


def apply_thresholds(result: AnomalyResult, image_threshold: float, pixel_threshold: float | None = None) -> AnomalyResult:
    """The same result decided again with new thresholds (no re-scoring): label, mask, regions, defect type.

    ``pixel_threshold`` defaults to ``image_threshold``; when they differ it is kept in ``extras["pixel_threshold"]``.
    """
    pixel = image_threshold if pixel_threshold is None else pixel_threshold
    extras = dict(result.extras)
    if pixel != image_threshold:
        extras["pixel_threshold"] = float(pixel)
    else:
        extras.pop("pixel_threshold", None)
    return build_result(image_score=result.image_score, anomaly_map=result.anomaly_map, threshold=image_threshold,
                        pixel_threshold=pixel, method=result.method, defect_probs=result.defect_probs,
                        path=result.path, extras=extras)


def threshold_from_good(detector: Detector, good_images: Sequence[str | Path | Image.Image],
                        quantile: float = DEFAULT_GOOD_QUANTILE) -> float:
    """The image-score threshold from known-good images scored on their own (e.g. a category's ``train/good``).

    For independent methods (clip, anomalyclip) only; transductive methods must score the good images in the
    same batch as the images they judge (see the module doc).
    """
    if not good_images:
        raise UsageError("a threshold from good images needs at least one known-good image")
    if detector.method.transductive:
        raise UsageError(f"method '{detector.name}' scores relative to its batch, so good images scored alone give "
                         f"no usable threshold; use `zsad score --threshold-from GOOD`, which scores them with the batch")
    return thresholds_from_good(detector.score(list(good_images)), quantile).image
