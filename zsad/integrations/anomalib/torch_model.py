"""The torch side of the anomalib wrappers: a zsad detector behind anomalib's ``InferenceBatch``.

anomalib hands models ``[B, 3, H, W]`` float images in [0, 1] (its ``read_image``: 8-bit RGB divided by 255). zsad
resizes and normalises inside its backbone (PIL bicubic squash to ``image_size``, the backbone's mean and std), from
8-bit RGB, so each image goes back to 8-bit (``round(x * 255)``, exact for what ``read_image`` made) and through
zsad's own preprocessing. Maps come back at the size the images came in, so anomalib's pixel metrics see the same
maps at the same resolution as ``zsad evaluate`` (each image's own size).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch
from anomalib.data import InferenceBatch
from PIL import Image
from torch import nn

from zsad.errors import ScoreError, UsageError
from zsad.types import AnomalyResult

#: how far outside [0, 1] an image may stray (float rounding of resize transforms) before it is refused
_RANGE_SLACK = 1e-3


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` floats in [0, 1] as 8-bit RGB images (what zsad's preprocessing takes)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise UsageError(f"zsad's anomalib models take RGB batches [B, 3, H, W], got shape {tuple(images.shape)}")
    low, high = float(images.min()), float(images.max())
    if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise UsageError(f"zsad's anomalib models take images in [0, 1] and normalise them themselves; got values in "
                         f"[{low:.3g}, {high:.3g}]: remove Normalize from the pre-processor or the augmentations")
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]


def score_together(detector, images: Sequence[Image.Image], *, desc: str = "", progress: bool = False) -> list[
        AnomalyResult]:
    """Decided results of ``images`` scored as ONE group through zsad's runner (transductive methods score them
    jointly; a group too small for the method is the runner's BatchTooSmallError). NaN or inf in a method's
    numbers raises :class:`~zsad.errors.ScoreError`."""
    from tqdm.auto import tqdm

    from zsad.runner import as_sources

    results = []
    with tqdm(total=len(images), desc=desc or detector.name, unit="img", file=sys.stderr, leave=False,
              disable=not progress) as bar:
        for outcome in detector.runner().run(as_sources(images), progress=bar.update):
            if outcome.error is not None:
                raise ScoreError(f"image {outcome.source.key}: {outcome.error}")
            results.append(outcome.result)
    return results


def inference_batch(results: Sequence[AnomalyResult], device: torch.device | str = "cpu") -> InferenceBatch:
    """zsad's decided results as anomalib's ``InferenceBatch``: scores and maps are zsad's probabilities, labels and
    masks zsad's decisions (``score >= threshold``, ``map >= threshold``)."""
    sizes = {r.anomaly_map.shape for r in results}
    if len(sizes) > 1:
        raise UsageError(f"one anomalib batch holds images of one size; got maps of sizes {sorted(sizes)}")

    def stack(values, dtype):
        return torch.as_tensor(np.stack(values), dtype=dtype, device=device)

    return InferenceBatch(
        pred_score=stack([np.float32(r.image_score) for r in results], torch.float32),
        pred_label=stack([bool(r.pred_label) for r in results], torch.bool),
        anomaly_map=stack([r.anomaly_map for r in results], torch.float32),
        pred_mask=stack([r.pred_mask for r in results], torch.bool),
    )


class ZsadModel(nn.Module):
    """A zsad :class:`~zsad.detector.Detector` as anomalib's torch model: ``forward(images) -> InferenceBatch``.

    The detector is kept out of the module tree on purpose: Lightning must neither move zsad's backbone (zsad
    picks the device, ``device=`` of the wrapper) nor write its frozen weights into checkpoints (they load from
    their own source, as in every zsad command). A batch given to :meth:`forward` is one group: transductive
    methods score its images against each other.
    """

    def __init__(self, detector) -> None:
        super().__init__()
        self.detector = detector  # a plain object, not an nn.Module: not a submodule (see the class doc)

    def score(self, images: torch.Tensor) -> list[AnomalyResult]:
        return score_together(self.detector, to_pil(images))

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        return inference_batch(self.score(images), images.device)
