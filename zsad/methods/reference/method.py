"""Reference-guided (few-shot) scoring: each test image against a handful of known-good images of the product.

Why: MuSc needs a batch, but a production line usually has a few good parts. Scoring one image against them is
the AnomalyDINO recipe (arXiv 2405.14529: nearest reference patch, 96.6 MVTec AD image AUROC from one good image)
on MuSc's features.

Features: MuSc's (:mod:`zsad.methods.musc`): patch tokens of four blocks -> LNAMD with r in {1, 3, 5} -> unit
vectors; one memory bank per (r, block), built once from the references and kept on the device in the compute
dtype. Bytes per reference image: ``len(rs) * len(layers) * L * (C * b + 8)`` (b = 4 in fp32, 2 in fp16; 8 for
the owner and position of each row): 12 * 1369 * (1024 * 4 + 8) = 67 MB for ViT-L/14 at 518 px in fp32 (34 MB
in fp16). The references' tokens are also kept on the host for joining batches (4 * L * C * 4 bytes, 22 MB).

Two modes, chosen per group by :meth:`ReferenceMethod.raw`:

- **bank** (any method, any backbone; always for one image): patch score = mean over the (r, block) banks of the
  distance to the nearest reference patch (tiled search, :mod:`.bank`); map upsampled bilinearly
  (``align_corners=True``) to the input size; raw image score ``s`` = the map's maximum. Nothing depends on the
  other test images.
- **joint** (``musc``/``auto``, a group of >= 2 test images, >= 5 images with the references): the references
  join the batch as known-normal images; MuSc's mutual scoring (lowest-30 % mean of the distances to the other
  images) runs over test images and references, and only the test images become outputs. RsCIN is not applied
  (it min-max normalises over the batch).

Calibration (both modes): ``d0`` = the largest raw score a held-out known-good image reaches, and every raw value
``v`` (image score or map pixel) becomes ``v / (v + d0)``: monotone, in [0, 1), and 0.5 exactly at "as far from the
references as the worst good image". In bank mode ``d0`` comes from leave-one-out over the references (each of up
to ``calibration_images`` references scored against the bank without its own patches; with one reference, against
its own patches more than ``1 + max(rs) // 2`` patches away, a rough stand-in: use >= 2 references); in joint mode
from the references' own rows of the joint pass. So scores are comparable across runs with the same references,
and ``--threshold-from`` (quantiles of good images' calibrated scores) works as with any method.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from zsad.errors import UsageError
from zsad.methods.base import INDEPENDENT, JOINT, Method
from zsad.methods.musc import MIN_IMAGES, MuscConfig, MuscFeatures, MuscMethod, concat_features, lnamd
from zsad.methods.musc.repeats import RepeatFindings
from zsad.methods.reference.bank import DEFAULT_TILE_ELEMENTS, Bank, Exclusion, build_bank, nearest_distance
from zsad.scoring.maps import grid_to_image, to_original_size
from zsad.types import RawOutput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceConfig:
    """Options of reference-guided scoring; the feature settings are MuSc's."""

    layers: tuple[int, ...] | None = None  # None = 4 evenly spread blocks
    rs: tuple[int, ...] = (1, 3, 5)
    joint: bool = True  # musc/auto: references join batches of >= 2 test images (False: always bank mode)
    coreset: float | None = None  # keep this fraction of each bank by greedy coreset (None: only over max_rows)
    max_rows: int = 1 << 18  # a bank larger than this (262,144 rows, ~191 references at 37 x 37) is coreset-cut
    calibration_images: int = 8  # references held out one at a time for the calibration
    tile_elements: int = DEFAULT_TILE_ELEMENTS
    top_fraction: float = 0.3  # joint mode: MuSc's interval average
    msm_precision: str = "fp32"  # joint mode: passed to MuSc
    repeats: str = "exclude"  # joint mode: passed to MuSc (zsad.methods.musc.repeats; references are trusted normals)
    batch_size: int = 8  # references per forward pass when the bank is built
    seed: int = 0
    progress: bool = False


class ReferenceMethod(Method):
    """Scores images against a memory bank of known-good references (see the module doc). Built by
    ``zsad.create(method, references=...)``; ``method`` (``base``) only chooses whether groups may be joint (musc,
    auto); the features and the activation are MuSc's whatever it is."""

    name = "reference"
    summary = "known-good references: nearest-patch distance to a memory bank of MuSc features"
    needs_text = False
    min_batch = 1
    feature_method = "musc"
    pos_interpolation = MuscMethod.pos_interpolation
    config_class = ReferenceConfig
    #: options that tune text prompts or learned adapters: refused by name
    text_options = frozenset({"prompts", "adapter", "musc_weight"})

    @classmethod
    def make_config(cls, options: dict) -> ReferenceConfig:
        dropped = sorted(set(options) & cls.text_options)
        if dropped:
            raise UsageError(f"options {dropped} do not apply to scoring against references (patch features only)")
        return super().make_config(options)

    @classmethod
    def published_activation(cls, spec, image_size: int, *, cache_dir: str | None = None) -> str:
        """MuSc's, whatever ``method`` is, because the features are MuSc's; a musc export holds the same, so both
        runtimes agree."""
        return MuscMethod.published_activation(spec, image_size, cache_dir=cache_dir)

    def __init__(self, backbone, *, dtype: torch.dtype, config: ReferenceConfig | None = None,
                 base: type[Method] = MuscMethod) -> None:
        super().__init__(backbone, dtype=dtype)
        self.config = config or ReferenceConfig()
        if not self.config.rs or any(r < 1 or r % 2 == 0 for r in self.config.rs):
            raise UsageError(f"reference degrees rs must be positive odd integers, got {self.config.rs}")
        if self.config.coreset is not None and not 0.0 < self.config.coreset <= 1.0:
            raise UsageError(f"coreset must be a fraction in (0, 1], got {self.config.coreset}")
        self.base = base.name
        self.name = f"{base.name}+reference"
        # joint: the references join groups of >= 2 test images (>= MIN_IMAGES with them), for joint base methods
        self.joint_from = 2 if base.joint_from and self.config.joint else 0
        self.musc = MuscMethod(backbone, dtype=dtype, config=MuscConfig(
            layers=self.config.layers, rs=self.config.rs, top_fraction=self.config.top_fraction,
            msm_precision=self.config.msm_precision, repeats=self.config.repeats, progress=self.config.progress,
            storage="fp32"))
        self.layers = self.musc.layers
        self.references: MuscFeatures | None = None
        self.banks: list[Bank] = []
        self.normal_max = math.nan

    # -- the references --------------------------------------------------------------------------------------
    @property
    def num_references(self) -> int:
        return 0 if self.references is None else int(self.references.pooled.shape[0])

    @property
    def bank_bytes(self) -> int:
        return sum(b.nbytes for b in self.banks)

    def set_references(self, images: Sequence[str | os.PathLike | Image.Image]) -> None:
        """Build the banks and the calibration from known-good images (paths or PIL), replacing earlier ones."""
        from zsad.data.images import load_image

        decoded = [img.convert("RGB") if isinstance(img, Image.Image) else load_image(img) for img in images]
        if not decoded:
            raise UsageError("reference-guided scoring needs at least one known-good reference image")
        step = max(1, self.config.batch_size)
        chunks = [self.extract(self.backbone.preprocess(decoded[i:i + step])) for i in range(0, len(decoded), step)]
        self.references = concat_features(chunks)
        self.banks = []
        k = self.num_references
        for tokens in self._degrees(self.references):
            rows = k * tokens.shape[1]
            keep = None
            if self.config.coreset is not None:
                keep = max(1, math.ceil(self.config.coreset * rows))
            elif rows > self.config.max_rows:
                keep = self.config.max_rows
                log.warning("reference bank of %d rows > %d: keeping %d by greedy coreset", rows, keep, keep)
            self.banks.append(build_bank(tokens, dtype=self.dtype, keep=keep, seed=self.config.seed))
        self.normal_max = self._calibrate()

    def _degrees(self, feats: MuscFeatures) -> Iterator[torch.Tensor]:
        """``[B, L, C]`` unit LNAMD features on the device, for every (r, block), r outer (MuSc's order)."""
        for r in self.config.rs:
            for tokens in feats.layers:
                yield lnamd(tokens.to(self.device), r)

    def _calibrate(self) -> float:
        """``d0``: the largest raw score of a held-out reference (leave-one-out; one reference: its own patches
        beyond the LNAMD reach)."""
        k = self.num_references
        count = min(k, max(1, self.config.calibration_images))
        held = sorted({round(i * (k - 1) / max(count - 1, 1)) for i in range(count)}) if k > 1 else [0]
        radius = None if k > 1 else 1 + max(self.config.rs) // 2
        subset = MuscFeatures(layers=[t[held] for t in self.references.layers], pooled=self.references.pooled[held])
        raw = self._bank_patch_scores(subset, owners=torch.tensor(held), radius=radius)
        peaks = [float(self._upsample(row).max()) for row in raw]
        d0 = max(peaks)
        if not math.isfinite(d0) or d0 <= 0:
            log.warning("references: calibration gave %s (identical references?); using 1e-6", d0)
            d0 = 1e-6
        return d0

    # -- scoring ---------------------------------------------------------------------------------------------
    def extract(self, images: torch.Tensor) -> MuscFeatures:
        return self.musc.extract(images)

    combine = staticmethod(concat_features)

    def _upsample(self, row: torch.Tensor) -> torch.Tensor:
        return grid_to_image(row[None].float(), self.backbone.image_size, align_corners=True)[0]

    @torch.inference_mode()
    def _bank_patch_scores(self, feats: MuscFeatures, owners: torch.Tensor | None = None,
                           radius: int | None = None) -> torch.Tensor:
        """``[B, L]`` mean over the banks of the nearest-reference distance; with ``owners`` (reference indices of
        the images) each image's own patches are excluded (within ``radius`` of its position, or all)."""
        if not self.banks:
            raise UsageError("no references: call set_references (or zsad.create(..., references=...)) first")
        b, length = feats.layers[0].shape[:2]
        total = torch.zeros(b * length, dtype=torch.float32, device=self.device)
        exclude = None
        if owners is not None:
            exclude = Exclusion(owner=owners.to(self.device, torch.int32).repeat_interleave(length),
                                position=torch.arange(length, device=self.device, dtype=torch.int32).repeat(b),
                                side=math.isqrt(length), radius=radius)
        for bank, z in zip(self.banks, self._degrees(feats)):
            total += nearest_distance(z.reshape(b * length, -1), bank, exclude=exclude,
                                      tile_elements=self.config.tile_elements)
        return (total / len(self.banks)).reshape(b, length).cpu()

    def _calibrated(self, patch: torch.Tensor, d0: float, sizes: Sequence[tuple[int, int]], mode: str,
                    first: int = 0, repeats: RepeatFindings | None = None) -> Iterator[RawOutput]:
        for i, size in enumerate(sizes, start=first):
            up = self._upsample(patch[i])
            peak = float(up.max())
            amap = to_original_size((up / (up + d0))[None], [size])[0]
            extras = {"mode": mode, "references": self.num_references, "raw_max": peak, "normal_max": d0,
                      "activation": getattr(self.backbone, "activation", None)}
            if repeats is not None:
                extras.update(repeats.extras(i))
            yield RawOutput(image_score=peak / (peak + d0), anomaly_map=amap, method=self.name, extras=extras)

    def mode(self, images: int, *, spread: bool = False) -> str | None:
        """Joint (mutual scoring with the references joining) for >= 2 test images that make >= MIN_IMAGES with
        the references, when the base method is joint and the group is on one rank; otherwise each image against
        the bank (a group spread over ranks needs no collective then)."""
        if spread:
            return INDEPENDENT
        if self.joint_from and images >= self.joint_from and images + self.num_references >= MIN_IMAGES:
            return JOINT
        return INDEPENDENT

    def raw(self, features: MuscFeatures, sizes: Sequence[tuple[int, int]]) -> Iterator[RawOutput]:
        """Bank mode: each image against the references' memory bank."""
        yield from self._calibrated(self._bank_patch_scores(features), self.normal_max, sizes, "bank")

    def raw_joint(self, features: MuscFeatures, sizes: Sequence[tuple[int, int]]) -> Iterator[RawOutput]:
        """Joint mode: MuSc over the references and the test images; only the test images become outputs."""
        k = self.num_references
        trusted = torch.arange(k + features.pooled.shape[0]) < k  # the references: never repeats, always references
        mutual = self.musc.mutual(concat_features([self.references, features]), trusted=trusted)
        patch = mutual.patch
        d0 = max(float(self._upsample(row).max()) for row in patch[:k])
        repeats = mutual.findings.without_leading(k) if mutual.findings is not None else None
        yield from self._calibrated(patch[k:], max(d0, 1e-6), sizes, "joint", repeats=repeats)

