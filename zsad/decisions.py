"""The one place where labels and masks are made: raw method outputs + thresholds -> :class:`AnomalyResult`.

Methods return :class:`~zsad.types.RawOutput` (scores and maps, no threshold). The runner, ``--threshold-from``,
the demo's slider and the dialogue evidence all call :func:`decide`; nothing else turns a score into a label.

Thresholds from known-good images: a quality engineer often has a handful of good parts and no defective ones.
Scoring the good images and flagging whatever goes above what they reach gives a threshold with a known
false-alarm rate: with quantile ``q``, about ``1 - q`` of normal images are flagged. Decisions are "strictly above
the quantile" (the threshold is the next float after it, because ``label = score >= threshold``), so with
``q = 1`` no good image is flagged. The image decision uses the quantile of the good images' scores; the pixel
mask uses the quantile of their map maxima, so a good image's mask is (almost always) empty. Transductive methods
(musc, auto) give batch-relative scores, so the runner scores the good images in the same batch as the images
they judge.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zsad.errors import ScoreError, UsageError
from zsad.scoring.regions import find_regions
from zsad.types import AnomalyResult, RawOutput

log = logging.getLogger(__name__)

#: Default decision threshold on image scores and map values, both probabilities of "anomalous" in [0, 1].
DEFAULT_THRESHOLD = 0.5
DEFAULT_GOOD_QUANTILE = 0.99


def check_unit(value: float, what: str, *, just_above_one: bool = False) -> float:
    """The one range check of thresholds and quantiles: ``value`` must be a finite number in [0, 1] (with
    ``just_above_one``, also the float just above 1: a threshold that flags nothing); otherwise a
    :class:`UsageError` naming ``what``."""
    top = np.nextafter(1.0, 2.0) if just_above_one else 1.0
    if not (np.isfinite(value) and 0.0 <= value <= top):
        raise UsageError(f"{what} must be in [0, 1], got {value}")
    return value


@dataclass(frozen=True)
class Thresholds:
    """``label = score >= image``; ``mask = map >= pixel`` (``pixel`` None: the image threshold)."""

    image: float = DEFAULT_THRESHOLD
    pixel: float | None = None

    def __post_init__(self) -> None:
        for name in ("image", "pixel"):
            value = getattr(self, name)
            if value is not None:
                check_unit(value, f"{name} threshold", just_above_one=True)

    @property
    def for_pixels(self) -> float:
        return self.image if self.pixel is None else self.pixel


@dataclass(frozen=True)
class GoodThresholds(Thresholds):
    """Thresholds learned from ``n_good`` known-good images at ``quantile``."""

    quantile: float = DEFAULT_GOOD_QUANTILE
    n_good: int = 0

    def describe(self) -> str:
        return (f"thresholds from {self.n_good} good images (quantile {self.quantile:g}): "
                f"image {self.image:.4f}, pixel {self.for_pixels:.4f}")


def decide(raw: RawOutput, thresholds: Thresholds | None = None, path: str | None = None) -> AnomalyResult:
    """Label, mask, regions and defect type of one image from its raw outputs.

    Scores and maps are clipped to [0, 1]; NaN or inf raise :class:`ScoreError` (never a silent "normal"). The
    defect type is named only for an image predicted anomalous; the probabilities are always kept. A pixel
    threshold that differs from the image threshold is recorded in ``extras["pixel_threshold"]``.
    """
    thresholds = thresholds or Thresholds()
    problem = raw.problem()
    if problem is not None:
        raise ScoreError(problem)
    score = float(np.clip(raw.image_score, 0.0, 1.0))
    amap = np.clip(raw.anomaly_map.astype(np.float32, copy=False), 0.0, 1.0)
    label = score >= thresholds.image
    mask = amap >= thresholds.for_pixels
    probs = dict(raw.defect_probs)
    extras = dict(raw.extras)
    if thresholds.for_pixels != thresholds.image:
        extras["pixel_threshold"] = float(thresholds.for_pixels)
    return AnomalyResult(
        image_score=score, anomaly_map=amap, pred_label=bool(label), pred_mask=mask,
        threshold=float(thresholds.image), method=raw.method,
        defect_type=max(probs, key=probs.get) if (probs and label) else None, defect_probs=probs,
        regions=find_regions(mask, amap), path=path, extras=extras, raw=raw,
    )


def redecide(result: AnomalyResult, thresholds: Thresholds) -> AnomalyResult:
    """``result`` decided again with other thresholds, from the raw outputs it keeps (no re-scoring)."""
    if result.raw is None:
        raise UsageError("this result keeps no raw outputs; score the image again to decide with other thresholds")
    return decide(result.raw, thresholds, result.path)


def thresholds_from_good(good: Sequence[RawOutput | AnomalyResult],
                         quantile: float = DEFAULT_GOOD_QUANTILE) -> GoodThresholds:
    """The ``quantile`` of the good images' scores (image decision) and of their map maxima (pixel mask).

    A good image whose score or map holds NaN or inf is left out with a warning; if all do, :class:`UsageError`.
    """
    check_unit(quantile, "the good-image quantile")
    raws = [g.raw if isinstance(g, AnomalyResult) and g.raw is not None else g for g in good]
    if not raws:
        raise UsageError("a threshold from good images needs at least one known-good image")
    # a good image whose numbers hold NaN or inf is left out (like an unreadable one), never the whole run stopped
    finite = [r for r in raws if np.isfinite(r.image_score) and np.isfinite(r.anomaly_map).all()]
    if len(finite) < len(raws):
        if not finite:
            raise UsageError(f"the scores or maps of all {len(raws)} good images hold NaN or inf values "
                             f"(likely a low-precision overflow: try --precision fp32)")
        log.warning("good images: leaving out %d of %d whose score or map holds NaN or inf values (try "
                    "--precision fp32)", len(raws) - len(finite), len(raws))
        raws = finite
    scores = np.clip(np.array([r.image_score for r in raws], dtype=np.float64), 0.0, 1.0)
    peaks = np.clip(np.array([float(np.max(r.anomaly_map)) for r in raws], dtype=np.float64), 0.0, 1.0)
    image = np.nextafter(np.quantile(scores, quantile), np.inf)
    # maps are float32 and numpy compares them with a Python float in float32: step in float32
    pixel = np.nextafter(np.float32(np.quantile(peaks, quantile)), np.float32(np.inf))
    return GoodThresholds(image=float(image), pixel=float(pixel), quantile=quantile, n_good=len(raws))
