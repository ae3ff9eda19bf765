"""MuSc: unlabeled images of one category score each other's patches (Li et al., ICLR 2024; xrli-U/MuSc).

Pipeline (the official code is the ground truth where it and the paper differ): raw residual-stream patch
tokens of four blocks (0-based [5, 11, 17, 23] for 24-block ViTs, [2, 5, 8, 11] for 12-block ones) -> LNAMD with
r in {1, 3, 5} -> MSM per (r, block) -> mean of the 12 maps -> bilinear upsampling (``align_corners=True``) to
the input size -> image score = maximum of the upsampled map -> RsCIN with the CLIP image embeddings.
On a vision-only timm backbone (DINOv2) the tokens are final-normed and RsCIN takes the normed class token
un-normalised, as the official ``dinov2_vitl14`` setting does (:mod:`zsad.backbones.timm`).

Scores are relative to the batch: RsCIN min-max normalises image scores over the batch, and maps are min-max
normalised with the batch's smallest and largest map values, so the most anomalous image of a batch scores 1
and the threshold 0.5 means "halfway between the batch's most normal and most anomalous". Use
``zsad evaluate`` or known-good images to pick a calibrated threshold.

The stages are pure functions in :mod:`.lnamd`, :mod:`.msm` and :mod:`.rscin` beside this module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zsad.backbones import BackboneSpec
from zsad.backbones.activation import config_activation, config_image_size, openai_weights
from zsad.backbones.base import Backbone, TokenOutput
from zsad.device import autocast
from zsad.errors import UsageError
from zsad.methods.base import Method, Share
from zsad.methods.musc.msm import musc_patch_scores
from zsad.methods.musc.repeats import MutualScores, check_mode, repeat_aware_scores
from zsad.methods.musc.rscin import rscin
from zsad.scoring.maps import grid_to_image, to_original_size
from zsad.types import RawOutput

log = logging.getLogger(__name__)

MIN_IMAGES = 5


@dataclass(frozen=True)
class MuscConfig:
    """MuSc's published defaults; ``reference_size`` trades exactness for speed on very large batches."""

    layers: tuple[int, ...] | None = None  # None = 4 evenly spread blocks
    rs: tuple[int, ...] = (1, 3, 5)
    top_fraction: float = 0.3
    block: int = 8
    reference_size: int | None = None
    max_exact_images: int = 1000  # above this, reference_size defaults to 500 (logged): the exact table is N^2
    seed: int = 0
    rscin_ks: tuple[int, ...] = (1, 2, 3)  # MVTec/BTAD setting; VisA uses (1, 8, 9)
    storage: str = "auto"  # host storage of tokens: fp16 on CUDA, fp32 on CPU ("fp16" / "fp32" to force)
    # storage of the LNAMD features during MSM: "fp16" halves their memory and, on CUDA, screens the pair products
    # on tensor cores with exact fp32 re-scoring of the winners (about 1e-3 from fp32: the storage rounding)
    msm_precision: str = "fp32"
    # repeated anomalies (zsad.methods.musc.repeats): "exclude" finds them, reports them on the rows and scores their
    # images without letting them vouch for each other; "report" finds and reports, keeping exact MuSc's scores;
    # "off" is exact MuSc with nothing looked for
    repeats: str = "exclude"
    progress: bool = False


@dataclass
class MuscFeatures:
    """Per-image features kept on the host between extraction and mutual scoring."""

    layers: list[torch.Tensor]  # per block ``[B, L, C]`` patch tokens (no class token)
    pooled: torch.Tensor  # ``[B, D]`` CLIP image embeddings for RsCIN


def concat_features(chunks: Sequence[MuscFeatures]) -> MuscFeatures:
    return MuscFeatures(
        layers=[torch.cat([c.layers[i] for c in chunks]) for i in range(len(chunks[0].layers))],
        pooled=torch.cat([c.pooled for c in chunks]),
    )


class MuscMethod(Method):
    name = "musc"
    summary = "mutual scoring: unlabeled images of a batch score each other (>= 5)"
    needs_text = False  # runs on vision-only backbones too (timm DINOv2/v3: the official DINOv2 path)
    min_batch = MIN_IMAGES
    joint_from = MIN_IMAGES
    exportable = True
    pos_interpolation = "bicubic"
    config_class = MuscConfig

    @classmethod
    def published_activation(cls, spec: BackboneSpec, image_size: int, *, cache_dir: str | None = None) -> str:
        """The official loader's quirk (xrli-U/MuSc ``models/backbone/open_clip/factory.py``, ``create_model``):
        with ``pretrained='openai'`` at an input size other than the JSON config's, it loads the OpenAI model, then
        builds ``CLIP(**model_cfg)`` from the config (plain ``nn.GELU`` unless ``-quickgelu``) and loads the OpenAI
        weights into it; at the config's size it keeps ``load_openai_model``'s QuickGELU. So the published CLIP
        numbers at 518 px ran GELU on weights trained with QuickGELU; ``auto`` does the same."""
        if openai_weights(spec) and image_size != config_image_size(spec):
            return config_activation(spec)
        return super().published_activation(spec, image_size, cache_dir=cache_dir)

    def __init__(self, backbone: Backbone, *, dtype: torch.dtype, config: MuscConfig | None = None) -> None:
        super().__init__(backbone, dtype=dtype)
        self.config = config or MuscConfig()
        if self.config.msm_precision not in ("fp32", "fp16"):
            raise UsageError(f"msm_precision must be fp32 or fp16, got {self.config.msm_precision!r}")
        check_mode(self.config.repeats)
        self.layers = list(self.config.layers) if self.config.layers else backbone.default_layers(4)
        storage = self.config.storage
        if storage == "auto":
            storage = "fp16" if backbone.device.type == "cuda" else "fp32"
        self.storage_dtype = torch.float16 if storage == "fp16" else torch.float32

    def features_from_tokens(self, out: TokenOutput) -> MuscFeatures:
        """Plain-path patch tokens moved to host memory in the storage dtype."""
        layers = [out.plain[i][:, 1:].to("cpu", self.storage_dtype) for i in self.layers]
        pooled = out.pooled.float()
        if getattr(self.backbone, "normalize_pooled", True):  # CLIP: unit embeddings; DINO: the raw normed cls token
            pooled = F.normalize(pooled, dim=-1)
        return MuscFeatures(layers=layers, pooled=pooled.cpu())

    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> MuscFeatures:
        with autocast(self.device, self.dtype):
            out = self.backbone.tokens(images, self.layers)
        return self.features_from_tokens(out)

    combine = staticmethod(concat_features)

    def _reference_size(self, n: int, share: Share | None) -> int | None:
        reference_size = self.config.reference_size
        if reference_size is None and n > self.config.max_exact_images and share is None:
            reference_size = 500
            log.warning("MuSc: %d images > %d, scoring each against 500 sampled references (set reference_size or "
                        "max_exact_images to change)", n, self.config.max_exact_images)
        return reference_size

    def patch_scores(self, feats: MuscFeatures, share: Share | None = None) -> torch.Tensor:
        """``[N, L]`` mean MSM distances (higher = more anomalous), computed on the backbone's device; with a
        ``share``, the rows of this rank's images of a group spread over ranks (always exact)."""
        return self.mutual(feats, share).patch

    def mutual(self, feats: MuscFeatures, share: Share | None = None,
               trusted: torch.Tensor | None = None) -> MutualScores:
        """:meth:`patch_scores` with repeated anomalies looked for as ``config.repeats`` says
        (:mod:`zsad.methods.musc.repeats`; ``trusted``: ``[N]`` bool, known-good images of the group). Sampled
        references (``reference_size``) score exactly as MuSc, with nothing looked for (logged)."""
        n = share.total if share is not None else feats.pooled.shape[0]
        reference_size = self._reference_size(n, share)
        z_dtype = torch.float16 if self.config.msm_precision == "fp16" else torch.float32
        comm = share.comm if share is not None else None
        counts = share.counts if share is not None else None
        if self.config.repeats != "off" and (reference_size is None or reference_size >= n - 1):
            return repeat_aware_scores(feats.layers, rs=self.config.rs, top_fraction=self.config.top_fraction,
                                       block=self.config.block, device=self.device, progress=self.config.progress,
                                       z_dtype=z_dtype, comm=comm, counts=counts, trusted=trusted,
                                       mode=self.config.repeats)
        if self.config.repeats != "off":
            log.warning("MuSc: repeated anomalies are not looked for with sampled references (reference_size=%s)",
                        reference_size)
        patch = musc_patch_scores(feats.layers, rs=self.config.rs, top_fraction=self.config.top_fraction,
                                  block=self.config.block, reference_size=reference_size, device=self.device,
                                  progress=self.config.progress, seed=self.config.seed, z_dtype=z_dtype, comm=comm,
                                  counts=counts)
        return MutualScores(patch, patch)

    def _maxima(self, patch_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each upsampled map's maximum and minimum."""
        maxima, minima = [], []
        for row in patch_scores:
            up = grid_to_image(row[None], self.backbone.image_size, align_corners=True)
            maxima.append(up.max())
            minima.append(up.min())
        return torch.stack(maxima), torch.stack(minima)

    def image_scores(self, patch_scores: torch.Tensor, pooled: torch.Tensor,
                     mutual: MutualScores | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Image score = max of each upsampled map, re-scored by RsCIN (in [0, 1]); also returns the batch's
        (min, max) map values for normalising the maps. With repeated patterns found (``mutual``), RsCIN smooths a
        pattern's images among themselves and every other image as without repeat scoring
        (:func:`~zsad.methods.musc.rscin.rscin`'s ``partition``)."""
        raw, minima = self._maxima(patch_scores)
        findings = mutual.findings if mutual is not None else None
        if findings is None or not findings.patterns or mutual.plain is patch_scores:
            scores = rscin(raw, pooled, ks=self.config.rscin_ks)
        else:
            plain, _ = self._maxima(mutual.plain)
            scores = rscin(raw, pooled, ks=self.config.rscin_ks, partition=findings.partition(), plain=plain)
        return scores, torch.stack([minima.min(), raw.max()])

    def raw_joint(self, features: MuscFeatures, sizes: Sequence[tuple[int, int]]) -> Iterator[RawOutput]:
        """Score the whole batch jointly, then yield one output at a time (full-size maps are not all kept)."""
        yield from self.outputs(self.mutual(features), features.pooled, sizes)

    def outputs(self, mutual: MutualScores, pooled: torch.Tensor, sizes: Sequence[tuple[int, int]],
                first: int = 0) -> Iterator[RawOutput]:
        """Raw outputs of images ``first .. first + len(sizes)`` of a group whose ``[N, L]`` patch scores (with
        what repeat detection found) and ``[N, D]`` embeddings are given (RsCIN and the map normalisation see the
        whole group)."""
        patch = mutual.patch
        scores, (lo, hi) = self.image_scores(patch, pooled, mutual)
        span = float(hi - lo) or 1.0
        for i, size in enumerate(sizes, start=first):
            up = grid_to_image(patch[i][None], self.backbone.image_size, align_corners=True)
            amap = to_original_size((up - lo) / span, [size])[0]
            extras = {"map_max_raw": float(up.max()), "activation": self.backbone.activation}
            if mutual.findings is not None:
                extras.update(mutual.findings.extras(i))
            yield RawOutput(image_score=float(scores[i]), anomaly_map=amap, method=self.name, extras=extras)

    def gathered_patch_scores(self, features: MuscFeatures | None, share: Share) -> tuple[MutualScores, torch.Tensor]:
        """Patch scores (``[N, L]``, with what repeat detection found) and ``[N, D]`` embeddings of the whole group,
        on every rank: MSM rows computed where the images are (:func:`mutual_scores_across`), then gathered (N*L +
        N*D floats: small; the findings are the same on every rank). A rank whose images all failed still takes
        part, with features of no image shaped like the others'."""
        comm = share.comm
        shapes = comm.all_gather_object(
            None if features is None else ([tuple(t.shape[1:]) for t in features.layers], features.pooled.shape[1]),
            "sharing feature shapes")
        if features is None:
            layers, width = next(s for s in shapes if s is not None)
            features = MuscFeatures(layers=[torch.empty((0, *shape), dtype=self.storage_dtype) for shape in layers],
                                    pooled=torch.empty((0, width)))
        mine = self.mutual(features, share)
        patch = torch.cat(comm.all_gather_tensors(mine.patch.float()))
        plain = patch if mine.plain is mine.patch else torch.cat(comm.all_gather_tensors(mine.plain.float()))
        return (MutualScores(patch, plain, mine.findings),
                torch.cat(comm.all_gather_tensors(features.pooled.float())))

    def raw_across(self, features: MuscFeatures | None, sizes: Sequence[tuple[int, int]],
                   share: Share) -> Iterator[RawOutput]:
        mutual, pooled = self.gathered_patch_scores(features, share)
        yield from self.outputs(mutual, pooled, sizes, share.offset)
