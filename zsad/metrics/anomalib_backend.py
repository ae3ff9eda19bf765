"""anomalib's metric classes on zsad's own maps (``zsad evaluate --metrics-backend anomalib``): an independent check.

The same scores, maps and masks that zsad's metrics read go through ``anomalib.metrics`` (``AUROC``, ``AUPRO``,
``AUPIMO``), at the same (original) resolution. How far the two may differ, and why:

- **Image and pixel AUROC**: both exact (every distinct score a threshold; anomalib through torchmetrics' ROC and a
  trapezoid, zsad through scikit-learn or the Mann-Whitney count); they differ by float32 rounding only:
  :data:`AUROC_TOLERANCE`.
- **AUPRO**: both follow the official MVTec script (every distinct score a threshold, trapezoid up to FPR 0.3 with
  the end point interpolated, divided by 0.3; 8-connected regions: OpenCV in anomalib, scipy in zsad). anomalib
  keeps its curve and area in float32 (zsad in float64): :data:`AUPRO_TOLERANCE`, ten times the float32 error of a
  trapezoid over millions of points (pairwise summation: about 20 x 6e-8 of the area). Only zsad's ``mvtec``
  variant is comparable; ``cflow`` rescales the FPR axis.
- **AUPIMO**: zsad integrates the exact step curve over exactly ``[lo, hi]``; anomalib samples 300,000 thresholds
  evenly between the normal maps' extremes, integrates the trapezoid in log FPR between the sampled points, and
  starts and stops at the sampled shared FPRs nearest the bounds. Both curves pass through anomalib's sampled
  points, and a PIMO curve is monotone, so on each sampled step (u_k, u_k+1) the two areas differ by at most
  (T_k+1 - T_k) (u_k+1 - u_k) / 2, and the bounds by |u_0 - log lo| + |u_m - log hi| (TPR <= 1); divided by
  log(hi / lo) and averaged over the anomalous images, that is the run's ``aupimo_tolerance``, computed from
  anomalib's own curves. Coarse data (few normal pixels, ties) make it large; a MVTec-sized category makes it
  small. anomalib refuses an integration range of 30 points or fewer; here it is forced and the bound says what
  that costs.

anomalib's AUPRO and AUPIMO stack the maps into one tensor, so they need every image of the set at one size;
otherwise they are None and a note says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zsad.errors import UsageError

#: agreement of image and pixel AUROC with zsad's (float32 rounding only)
AUROC_TOLERANCE = 1e-6
#: agreement of AUPRO with zsad's ``mvtec`` variant (float32 curve and trapezoid in anomalib)
AUPRO_TOLERANCE = 1e-5
#: the keys this backend adds to a category's metrics
KEYS: tuple[str, ...] = ("image_auroc", "pixel_auroc", "aupro", "aupimo", "aupimo_tolerance")
PREFIX = "anomalib_"


@dataclass
class AnomalibMetrics:
    """anomalib's numbers on one set (None where not defined), the AUPIMO bound, and notes on what was skipped."""

    values: dict[str, float | None]
    notes: list[str] = field(default_factory=list)

    def prefixed(self) -> dict[str, float | None]:
        return {PREFIX + key: value for key, value in self.values.items()}


def _import():
    try:
        import anomalib.metrics  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise UsageError(f'the anomalib metrics backend needs anomalib: pip install "zsad[anomalib]" ({exc})') from None


def check_available() -> None:
    """A UsageError naming the extra when anomalib cannot be imported."""
    _import()


class _Fields:
    """The attributes anomalib's metrics read from a batch."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def _scalar(value) -> float | None:
    return None if value is None else float(value)


def image_auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    import torch
    from anomalib.metrics import AUROC

    metric = AUROC(fields=["pred_score", "gt_label"])
    metric.update(_Fields(pred_score=torch.as_tensor(np.asarray(scores, dtype=np.float32)),
                          gt_label=torch.as_tensor(np.asarray(labels, dtype=np.int64))))
    return float(metric.compute())


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    import torch
    from anomalib.metrics import AUROC

    metric = AUROC(fields=["anomaly_map", "gt_mask"])
    for amap, mask in zip(maps, masks):  # image by image: sizes may differ
        metric.update(_Fields(anomaly_map=torch.from_numpy(np.asarray(amap, dtype=np.float32)),
                              gt_mask=torch.from_numpy(np.asarray(mask, dtype=bool)).long()))
    return float(metric.compute())


def _stacked(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]):
    import torch

    return (torch.from_numpy(np.stack([np.asarray(a, dtype=np.float32) for a in maps])),
            torch.from_numpy(np.stack([np.asarray(m, dtype=bool) for m in masks])))


def aupro(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], fpr_limit: float = 0.3) -> float:
    from anomalib.metrics import AUPRO

    amaps, gts = _stacked(maps, masks)
    metric = AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=fpr_limit)
    metric.update(_Fields(anomaly_map=amaps, gt_mask=gts.long()))
    return float(metric.compute())


def aupimo(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], fpr_bounds: Sequence[float] = (1e-5, 1e-4),
           num_thresholds: int = 300_000) -> tuple[float, float]:
    """anomalib's mean AUPIMO over the anomalous images (non-empty masks) and the bound on its distance from the
    exact value (see the module doc)."""
    import logging

    import torch
    from anomalib.metrics import AUPIMO
    from anomalib.metrics.pimo.functional import thresh_at_shared_fpr_level

    lo, hi = (float(b) for b in fpr_bounds)
    amaps, gts = _stacked(maps, masks)
    quiet = logging.getLogger("anomalib.metrics.pimo")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its memory and coarse-range warnings: the bound below says what they cost
    try:
        metric = AUPIMO(num_thresholds=num_thresholds, fpr_bounds=(lo, hi), return_average=False, force=True)
        metric.update(_Fields(anomaly_map=amaps, gt_mask=gts))
        pimo, found = metric.compute()
    finally:
        quiet.setLevel(level)
    scores = found.aupimos[~torch.isnan(found.aupimos)]
    # the sampled points anomalib integrated between (its own choice of the bound thresholds)
    upper_index, _, _ = thresh_at_shared_fpr_level(pimo.thresholds, pimo.shared_fpr, lo)
    lower_index, _, _ = thresh_at_shared_fpr_level(pimo.thresholds, pimo.shared_fpr, hi)
    fpr = pimo.shared_fpr[lower_index:upper_index + 1].flip(0).double()
    tprs = pimo.per_image_tprs[:, lower_index:upper_index + 1].flip(1).double()
    anomalous = gts.flatten(1).any(1)
    keep = fpr > 0
    u, tprs = fpr[keep].log(), tprs[anomalous][:, keep]
    grid = ((tprs[:, 1:] - tprs[:, :-1]).clamp(min=0) * (u[1:] - u[:-1])).sum(1) / 2
    edges = abs(float(u[0]) - math.log(lo)) + abs(float(u[-1]) - math.log(hi))
    bound = float(((grid + edges) / math.log(hi / lo)).mean())
    return float(scores.mean()), bound


def anomalib_metrics(scores: Sequence[float], labels: Sequence[int], maps: Sequence[np.ndarray] | None = None,
                     masks: Sequence[np.ndarray] | None = None, *, fpr_limit: float = 0.3,
                     aupimo_fpr_bounds: Sequence[float] = (1e-5, 1e-4)) -> AnomalibMetrics:
    """Image AUROC, and with maps and masks pixel AUROC, AUPRO and AUPIMO (with its tolerance), by anomalib.

    AUPIMO uses the images zsad's AUPIMO uses: the normal ones and the anomalous ones with a non-empty mask (an
    anomalous image with an empty mask would count as normal for anomalib)."""
    _import()
    out = AnomalibMetrics(dict.fromkeys(KEYS))
    out.values["image_auroc"] = image_auroc(scores, labels)
    if maps is None or masks is None:
        return out
    out.values["pixel_auroc"] = pixel_auroc(maps, masks)
    if len({np.shape(a) for a in maps}) > 1:
        out.notes.append("images of several sizes: anomalib's AUPRO and AUPIMO stack maps of one size, skipped")
        return out
    out.values["aupro"] = aupro(maps, masks, fpr_limit)
    usable = [i for i, (y, m) in enumerate(zip(labels, masks)) if y == 0 or np.any(m)]
    kinds = {bool(np.any(masks[i])) for i in usable}
    if kinds == {False, True}:
        try:
            mean, bound = aupimo([maps[i] for i in usable], [masks[i] for i in usable], aupimo_fpr_bounds)
        except (ValueError, RuntimeError) as exc:  # e.g. too few normal pixels to reach the lower FPR bound
            out.notes.append(f"anomalib's AUPIMO refused this set: {str(exc).splitlines()[0]}")
        else:
            out.values["aupimo"], out.values["aupimo_tolerance"] = mean, bound
    else:
        out.notes.append("AUPIMO needs normal and anomalous images with masks")
    return out


def markdown(summary: dict[str, Any]) -> list[str]:
    """Lines of ``metrics.md``: zsad's and anomalib's numbers side by side, per category (empty without them)."""
    rows = {cat: m for cat, m in (summary.get("categories") or {}).items() if PREFIX + "image_auroc" in m}
    if not rows:
        return []

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.6f}"

    lines = ["", f"anomalib's metric classes on the same maps (AUROC agrees to {AUROC_TOLERANCE:g}, AUPRO to "
                 f"{AUPRO_TOLERANCE:g} with aupro mvtec, AUPIMO within each row's bound):", "",
             "| category | image_auroc zsad | anomalib | pixel_auroc zsad | anomalib | aupro zsad | anomalib | "
             "aupimo zsad | anomalib | aupimo bound |", "|---|---|---|---|---|---|---|---|---|---|"]
    for cat, m in rows.items():
        pairs = [cell(m.get(k)) + " | " + cell(m.get(PREFIX + k)) for k in ("image_auroc", "pixel_auroc", "aupro",
                                                                              "aupimo")]
        lines.append(f"| {cat} | " + " | ".join(pairs) + f" | {cell(m.get(PREFIX + 'aupimo_tolerance'))} |")
    return lines
