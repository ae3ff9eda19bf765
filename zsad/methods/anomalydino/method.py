"""AnomalyDINO's batched zero-shot mode (dammsi/AnomalyDINO ``run_anomalydino_batched.py``): the images of a batch
score each other's patches, a MuSc alternative for vision-only backbones.

Per image: DINOv2 tokens at shorter side 672 (the official default; ViT-S), foreground mask when masking is on
(the official batched run uses "masking_only": the MVTec AD / VisA per-category defaults, no rotation), patch
distance :func:`.mutual.mutual_distances`, masked-out patches set to 0, image score = mean of the top 1 % of the
patch distances, map = the patch grid resized bilinearly to the original image and smoothed (sigma 4), as the
official plots. The official code reports these raw distances; zsad, as for ``musc``, min-max normalises them over
the batch (image scores by the batch's smallest and largest score, maps by its smallest and largest patch distance)
so 0.5 means "halfway between the batch's most normal and most anomalous"; the raw values ride in ``extras``.

Across ranks (``torchrun``): every rank gathers the group's tokens (small: ``L x C`` floats per image), scores its
own images against all the others, then the raw scores and extremes are gathered for the normalisation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from zsad.methods.anomalydino.features import DinoFeatures, DinoPatchMethod, concat_features
from zsad.methods.anomalydino.maps import SIGMA, TOP_FRACTION, distance_map, mean_top
from zsad.methods.anomalydino.mutual import QUANTILE, mutual_distances
from zsad.methods.anomalydino.reference import AnomalyDinoReference
from zsad.methods.anomalydino.search import DEFAULT_TILE_ELEMENTS
from zsad.methods.base import Share
from zsad.types import RawOutput

MIN_IMAGES = 2


@dataclass(frozen=True)
class AnomalyDinoConfig:
    """The official batched defaults (``run_anomalydino_batched.py``)."""

    quantile: float = QUANTILE
    masking: bool | None = None  # test-patch foreground masking; None: off, or the official default in evaluate
    top_fraction: float = TOP_FRACTION
    sigma: float = SIGMA
    tile_elements: int = DEFAULT_TILE_ELEMENTS
    progress: bool = False


class AnomalyDinoMethod(DinoPatchMethod):
    name = "anomalydino"
    summary = ("AnomalyDINO (DINOv2): a batch of >= 2 images score each other's patches (with --reference: "
               "few-shot against known-good images)")
    min_batch = MIN_IMAGES
    joint_from = MIN_IMAGES
    default_image_size = 672
    config_class = AnomalyDinoConfig
    reference_scorer = AnomalyDinoReference

    def __init__(self, backbone, *, dtype: torch.dtype, config: AnomalyDinoConfig | None = None) -> None:
        self.config = config or AnomalyDinoConfig()
        super().__init__(backbone, dtype=dtype, masking=self.config.masking)

    combine = staticmethod(concat_features)

    def _distances(self, features: DinoFeatures, rows: Sequence[int]) -> list[torch.Tensor]:
        dists = mutual_distances(features.tokens, rows, quantile=self.config.quantile,
                                 tile_elements=self.config.tile_elements, device=self.device)
        for d, i in zip(dists, rows):
            mask = features.masks[i]
            if mask is not None:
                d[~torch.from_numpy(mask)] = 0.0
        return dists

    def raw_joint(self, features: DinoFeatures, sizes: Sequence[tuple[int, int]]) -> Iterator[RawOutput]:
        dists = self._distances(features, range(len(features)))
        yield from self._outputs(features, dists, sizes, self._stats(dists))

    def _stats(self, dists: Sequence[torch.Tensor]) -> list[tuple[float, float, float]]:
        """Per image: raw score, smallest and largest patch distance."""
        return [(mean_top(d, self.config.top_fraction), float(d.min()), float(d.max())) for d in dists]

    def _outputs(self, features: DinoFeatures, dists: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]],
                 stats: Sequence[tuple[float, float, float]], first: int = 0) -> Iterator[RawOutput]:
        """Outputs of this share's images (``dists``, ``sizes``), normalised with the whole group's ``stats``."""
        scores = np.array([s for s, _, _ in stats])
        s_lo, s_span = float(scores.min()), float(scores.max() - scores.min()) or 1.0
        lo = min(m for _, m, _ in stats)
        span = (max(m for _, _, m in stats) - lo) or 1.0
        for index, (d, size) in enumerate(zip(dists, sizes)):
            grid = features.grids[first + index]
            raw_score = stats[first + index][0]
            amap = distance_map(d.reshape(grid), size, self.config.sigma)
            yield RawOutput(image_score=(raw_score - s_lo) / s_span, anomaly_map=(amap - lo) / span,
                            method=self.name,
                            extras={"raw_score": raw_score, "raw_max": float(amap.max()), "masking": self.masking})

    def raw_across(self, features: DinoFeatures | None, sizes: Sequence[tuple[int, int]],
                   share: Share) -> Iterator[RawOutput]:
        """Exact across ranks: every rank holds the group's tokens, scores its own images, and the raw scores and
        extremes are gathered for the normalisation."""
        comm = share.comm
        every = comm.all_gather_object(features, "gathering a group's patch tokens")
        group = concat_features([f for f in every if f is not None])
        rows = range(share.offset, share.offset + (0 if features is None else len(features)))
        dists = self._distances(group, rows)
        stats = [s for part in comm.all_gather_object(self._stats(dists), "gathering raw scores") for s in part]
        yield from self._outputs(group, dists, sizes, stats, first=share.offset)
