"""AnomalyDINO few-shot scoring: each test image against the patches of a few known-good references.

As the official code (dammsi/AnomalyDINO ``src/detection.py``, ``run_anomaly_detection``, default "agnostic"
preprocessing) does it:

- references: each one (and, with ``rotation``, its 7 rotations by 45-degree steps) through the backbone; every
  patch token of every copy goes into the bank (references are never masked: ``mask_ref_images=False``);
- test image: its patch tokens; with ``masking`` the background patches (:mod:`.masking`) are left out of the search
  and get distance 0;
- patch distance: ``1 - cos`` to the nearest bank patch (mean over the ``neighbors`` nearest), :mod:`.search`;
- image score: mean of the top 1 % of the patch distances; map: the patch grid resized bilinearly to the original
  image and smoothed (Gaussian sigma 4), :mod:`.maps`.

Calibration (zsad's, as for every reference scorer): ``d0`` = the largest raw image score a held-out known-good
image reaches (each of up to ``calibration_images`` references, unrotated, against the bank without any copy of
itself; with one reference, its own unrotated patches more than one patch away), and ``p0`` the largest map value
it reaches; image scores become ``s / (s + d0)`` and map values ``v / (v + p0)``, so 0.5 means "as far from the
references as the worst held-out good image" for both. Raw values ride in ``extras``. The calibration is computed
on first use with the masking then in force (``zsad evaluate`` sets masking per category after the references).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from zsad.errors import UsageError
from zsad.methods.anomalydino.features import DinoFeatures, DinoPatchMethod, concat_features
from zsad.methods.anomalydino.ivf import DEFAULT_PROBE
from zsad.methods.anomalydino.maps import SIGMA, TOP_FRACTION, distance_map, mean_top
from zsad.methods.anomalydino.preprocess import ROTATION_ANGLES, resized_size, rotations
from zsad.methods.anomalydino.search import DEFAULT_TILE_ELEMENTS, PatchBank, nearest_cosine
from zsad.methods.base import INDEPENDENT
from zsad.types import RawOutput

log = logging.getLogger(__name__)

SEARCHES = ("exact", "ivf", "auto")


@dataclass(frozen=True)
class AnomalyDinoReferenceConfig:
    """The official defaults (``run_anomalydino.py``: ``--k_neighbors 1``, agnostic preprocessing)."""

    neighbors: int = 1  # k nearest reference patches averaged
    rotation: bool = True  # references augmented by the 8 rotations (official "agnostic" default)
    masking: bool | None = None  # test-patch foreground masking; None: off, or the official default in evaluate
    top_fraction: float = TOP_FRACTION
    sigma: float = SIGMA
    calibration_images: int = 8
    tile_elements: int = DEFAULT_TILE_ELEMENTS
    # "exact" (the official exhaustive search), "ivf" (an inverted-file index: faster on large banks, a patch's
    # distance may come out larger, see zsad.methods.anomalydino.ivf), or "auto" (default): ivf above ivf_from
    # bank rows (more than 4 references with rotations at 448); zsad evaluate runs "exact" unless told otherwise
    search: str = "auto"
    ivf_from: int = 1 << 15
    probe: int = DEFAULT_PROBE
    bank_dtype: str = "fp32"  # "fp16" halves the bank's memory (products still in fp32; rows rounded to fp16)
    batch_size: int = 8  # reference copies per forward pass when the bank is built
    progress: bool = False


def _held_out(count: int, most: int) -> list[int]:
    """Up to ``most`` references spread evenly over ``count`` (all of them when there are few)."""
    take = min(count, max(1, most))
    return sorted({round(i * (count - 1) / max(take - 1, 1)) for i in range(take)}) if count > 1 else [0]


class AnomalyDinoReference(DinoPatchMethod):
    """AnomalyDINO's few-shot scoring against known-good references (see the module doc). Built by
    ``zsad.create("anomalydino", references=...)``."""

    name = "anomalydino+reference"
    summary = "AnomalyDINO few-shot: nearest reference patch (1 - cos), top-1 % mean"
    min_batch = 1
    joint_from = 0
    default_image_size = 448
    config_class = AnomalyDinoReferenceConfig

    def __init__(self, backbone, *, dtype: torch.dtype, config: AnomalyDinoReferenceConfig | None = None,
                 base=None) -> None:
        self.config = config or AnomalyDinoReferenceConfig()
        super().__init__(backbone, dtype=dtype, masking=self.config.masking)
        if self.config.neighbors < 1:
            raise UsageError(f"neighbors must be at least 1, got {self.config.neighbors}")
        if self.config.search not in SEARCHES:
            raise UsageError(f"search must be one of {', '.join(SEARCHES)}, got {self.config.search!r}")
        if self.config.bank_dtype not in ("fp32", "fp16"):
            raise UsageError(f"bank_dtype must be fp32 or fp16, got {self.config.bank_dtype!r}")
        self.bank: PatchBank | None = None
        self.originals: DinoFeatures | None = None  # the held-out references unrotated, for the calibration
        self.held: list[int] = []  # which references the calibration holds out
        self.sizes: list[tuple[int, int]] = []
        self._calibration: dict[bool, tuple[float, float]] = {}

    # -- the references --------------------------------------------------------------------------------------
    @property
    def num_references(self) -> int:
        return len(self.sizes)

    @property
    def bank_bytes(self) -> int:
        return 0 if self.bank is None else self.bank.nbytes

    def set_references(self, images: Sequence[str | os.PathLike | Image.Image]) -> None:
        """Build the bank from known-good images (paths or PIL), replacing earlier ones. Streamed: each reference's
        rotations are made, passed through the backbone and written into the preallocated bank a chunk at a time,
        so memory holds the bank once (plus the unrotated tokens of the few references the calibration holds
        out)."""
        from tqdm.auto import tqdm

        from zsad.data.images import load_image

        decoded = [img.convert("RGB") if isinstance(img, Image.Image) else load_image(img) for img in images]
        if not decoded:
            raise UsageError("reference-guided scoring needs at least one known-good reference image")
        self.bank = None  # the old bank goes before the new one is allocated
        angles = ROTATION_ANGLES if self.config.rotation else (0,)
        grids = [self._grid(ref) for ref in decoded]  # a rotation keeps the canvas, so the grid
        rows = len(angles) * sum(h * w for h, w in grids)
        dtype = torch.float16 if self.config.bank_dtype == "fp16" else torch.float32
        bank = PatchBank.empty(rows, self.backbone.width, self.device, dtype)
        held = _held_out(len(decoded), self.config.calibration_images)
        originals: dict[int, torch.Tensor] = {}
        pending: list[tuple[int, bool, Image.Image]] = []
        filled = 0
        bar = tqdm(total=len(decoded) * len(angles), desc="reference bank", unit="img",
                   disable=not self.config.progress)

        def flush() -> None:
            nonlocal filled
            if not pending:
                return
            found, found_grids = self.forward_tokens(self.preprocess([img for _, _, img in pending]))
            for (owner, original, _), tokens, grid in zip(pending, found, found_grids):
                if grid != grids[owner]:
                    raise AssertionError(f"reference {owner}: grid {grid}, expected {grids[owner]}")
                filled = bank.put(filled, tokens, owner)
                if original and owner in held:
                    originals[owner] = tokens
            bar.update(len(pending))
            pending.clear()

        with bar:
            for owner, ref in enumerate(decoded):
                for j, img in enumerate(rotations(ref, angles) if self.config.rotation else [ref]):
                    pending.append((owner, j == 0, img))
                    if len(pending) >= max(1, self.config.batch_size):
                        flush()
            flush()
        search = self.config.search
        if search == "ivf" or (search == "auto" and bank.rows > self.config.ivf_from):
            bank.index(probe=self.config.probe)
        self.bank = bank
        self.held = held
        self.originals = DinoFeatures(tokens=[originals[i] for i in held], grids=[grids[i] for i in held],
                                      masks=[None] * len(held))
        self.sizes = [ref.size for ref in decoded]
        self._calibration = {}
        log.info("anomalydino references: %d images x %d rotations, bank of %d patches (%.1f MB, %s search)",
                 len(decoded), len(angles), bank.rows, bank.nbytes / 1e6, "ivf" if bank.ivf is not None else "exact")

    def _grid(self, image: Image.Image) -> tuple[int, int]:
        """The patch grid of an image after :func:`.preprocess.prepare` (shorter side resized, then cropped)."""
        width, height = resized_size(*image.size, self.backbone.image_size)
        patch = self.backbone.patch_size
        return height // patch, width // patch

    # -- scoring ---------------------------------------------------------------------------------------------
    def mode(self, images: int, *, spread: bool = False) -> str | None:
        return INDEPENDENT if images >= 1 else None

    def patch_distances(self, tokens: torch.Tensor, mask: np.ndarray | None,
                        exclude_owner: int | None = None) -> torch.Tensor:
        """``[L]`` raw patch distances of one image (0 on masked-out patches), on the host."""
        if self.bank is None:
            raise UsageError("no references: call set_references (or zsad.create(..., references=...)) first")
        out = torch.zeros(tokens.shape[0], dtype=torch.float32)
        keep = slice(None) if mask is None else torch.from_numpy(np.asarray(mask, dtype=bool))
        queries = tokens[keep]
        if queries.shape[0]:
            out[keep] = nearest_cosine(queries, self.bank, k=self.config.neighbors, exclude_owner=exclude_owner,
                                       tile_elements=self.config.tile_elements).cpu()
        return out

    def raw_outputs(self, distances: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]
                    ) -> tuple[float, np.ndarray]:
        """The raw image score and the raw full-size map of one image's ``[L]`` patch distances."""
        score = mean_top(distances, self.config.top_fraction)
        return score, distance_map(distances.reshape(grid), size, self.config.sigma)

    def _self_distances(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """One reference: each of its unrotated patches against its own patches more than one patch away."""
        z = torch.nn.functional.normalize(tokens.float(), dim=-1)
        sims = z @ z.T
        h, w = grid
        pos = torch.arange(h * w)
        near = ((pos[:, None] // w - pos[None] // w).abs() <= 1) & ((pos[:, None] % w - pos[None] % w).abs() <= 1)
        sims.masked_fill_(near, -math.inf)
        k = min(self.config.neighbors, max(1, h * w - 9))
        return (1.0 - sims.topk(k, dim=1).values).clamp_min(0.0).mean(dim=1)

    def calibration(self) -> tuple[float, float]:
        """``(d0, p0)``: the largest raw image score and map value of held-out references (module doc)."""
        if self.masking in self._calibration:
            return self._calibration[self.masking]
        k = self.num_references
        scores, peaks = [], []
        for j, i in enumerate(self.held):
            tokens, grid = self.originals.tokens[j], self.originals.grids[j]
            mask = self.mask(tokens, grid)
            if k > 1:
                dist = self.patch_distances(tokens, mask, exclude_owner=i)
            else:
                dist = self._self_distances(tokens, grid)
                if mask is not None:
                    dist = torch.where(torch.from_numpy(mask), dist, torch.zeros_like(dist))
            score, amap = self.raw_outputs(dist, grid, self.sizes[i])
            scores.append(score)
            peaks.append(float(amap.max()))
        d0, p0 = max(scores), max(peaks)
        if not (math.isfinite(d0) and d0 > 0 and math.isfinite(p0) and p0 > 0):
            log.warning("anomalydino references: calibration gave %s / %s (identical references?); using 1e-6",
                        d0, p0)
            d0, p0 = (d0 if math.isfinite(d0) and d0 > 0 else 1e-6), (p0 if math.isfinite(p0) and p0 > 0 else 1e-6)
        self._calibration[self.masking] = (d0, p0)
        return d0, p0

    def raw(self, features: DinoFeatures, sizes: Sequence[tuple[int, int]]) -> Iterator[RawOutput]:
        """Each image against the reference bank, calibrated (module doc)."""
        d0, p0 = self.calibration()
        for tokens, grid, mask, size in zip(features.tokens, features.grids, features.masks, sizes):
            dist = self.patch_distances(tokens, mask)
            score, amap = self.raw_outputs(dist, grid, size)
            yield RawOutput(image_score=score / (score + d0), anomaly_map=amap / (amap + p0), method=self.name,
                            extras={"mode": "anomalydino", "references": self.num_references, "raw_score": score,
                                    "raw_max": float(amap.max()), "normal_score": d0, "normal_max": p0,
                                    "masking": self.masking, "rotation": self.config.rotation})

    combine = staticmethod(concat_features)
