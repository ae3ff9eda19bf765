"""``auto``: what a user wants by default. MuSc fused with ``clip`` when a batch has at least 5 images,
``clip`` alone otherwise; one backbone pass serves both (V-V taps for clip, plain taps for MuSc).

Fusion rule: each method's image scores are min-max normalised over the batch, and so are its maps (with the
batch's smallest and largest map values); then ``fused = w * musc + (1 - w) * clip`` for scores and maps, with
``w = musc_weight`` (default 0.75: MuSc is the stronger published zero-shot method, MVTec AD image AUROC 97.8
against about 91 for prompt-based CLIP, while CLIP adds image-level semantics). The defect type is CLIP's.

Activation: the one pass runs one MLP activation for both halves, and ``auto`` resolves to the weights' own
(QuickGELU for OpenAI's, clip's published setting; :meth:`Method.published_activation`), not to MuSc's loader quirk
(GELU at 518 px): this fusion is zsad's own, with no published pipeline to reproduce, and a second, GELU pass for
the MuSc half would nearly double the time of small batches (6 images at 518 px on 2 CPU cores: backbone 123 s,
everything else 19 s) and still add about a fifth at 200 images, where mutual scoring dominates
(evaluation/RESULTS.md). ``activation="gelu"`` runs both halves with GELU; ``musc`` alone is the published pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from zsad.backbones.base import Backbone
from zsad.errors import UsageError
from zsad.methods.base import Method, Share
from zsad.methods.clip import ClipConfig, ClipEvidence, ClipMethod, concat_evidence
from zsad.methods.musc import MIN_IMAGES, MuscConfig, MuscFeatures, MuscMethod, concat_features
from zsad.methods.musc.repeats import MutualScores
from zsad.scoring.maps import grid_to_image, to_original_size
from zsad.types import RawOutput


@dataclass(frozen=True)
class AutoConfig:
    musc_weight: float = 0.75
    prompts: str | None = None  # passed to the clip part
    reference_size: int | None = None  # passed to the MuSc part
    msm_precision: str = "fp32"  # passed to the MuSc part
    repeats: str = "exclude"  # passed to the MuSc part (zsad.methods.musc.repeats)
    progress: bool = False


@dataclass
class AutoFeatures:
    musc: MuscFeatures
    clip: ClipEvidence


def _minmax(values: torch.Tensor) -> torch.Tensor:
    span = float(values.max() - values.min())
    return (values - values.min()) / span if span > 0 else torch.zeros_like(values)


class AutoMethod(Method):
    name = "auto"
    summary = "MuSc fused with clip for batches of >= 5 images, clip alone otherwise"
    joint_from = MIN_IMAGES
    exportable = True
    config_class = AutoConfig

    def __init__(self, backbone: Backbone, *, dtype: torch.dtype, config: AutoConfig | None = None) -> None:
        super().__init__(backbone, dtype=dtype)
        self.config = config or AutoConfig()
        if not 0.0 <= self.config.musc_weight <= 1.0:
            raise UsageError(f"musc_weight must be in [0, 1], got {self.config.musc_weight}")
        self.clip = ClipMethod(backbone, dtype=dtype, config=ClipConfig(prompts=self.config.prompts))
        self.musc = MuscMethod(backbone, dtype=dtype,
                               config=MuscConfig(reference_size=self.config.reference_size,
                                                 msm_precision=self.config.msm_precision,
                                                 repeats=self.config.repeats, progress=self.config.progress))

    def setup(self, class_name: str | None = None) -> None:
        super().setup(class_name)
        self.clip.setup(class_name)

    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> AutoFeatures:
        self.clip.ensure_text()
        out = self.clip.run_backbone(images, extra_layers=self.musc.layers)
        return AutoFeatures(musc=self.musc.features_from_tokens(out), clip=self.clip.evidence(out))

    @staticmethod
    def combine(chunks: Sequence[AutoFeatures]) -> AutoFeatures:
        return AutoFeatures(musc=concat_features([c.musc for c in chunks]),
                            clip=concat_evidence([c.clip for c in chunks]))

    def raw(self, features: AutoFeatures, sizes: Sequence[tuple[int, int]]) -> Iterator[RawOutput]:
        """Fewer images than MuSc needs: ``clip`` alone."""
        yield from self._clip_alone(features.clip, sizes)

    def raw_joint(self, features: AutoFeatures, sizes: Sequence[tuple[int, int]]) -> Iterator[RawOutput]:
        """MuSc fused with ``clip`` (see the module doc)."""
        mutual = self.musc.mutual(features.musc)
        scores, lo, hi = self._clip_stats(features.clip)
        yield from self._fused(features.clip, sizes, mutual, features.musc.pooled, (scores, lo, hi), first=0)

    def raw_across(self, features: AutoFeatures | None, sizes: Sequence[tuple[int, int]],
                   share: Share) -> Iterator[RawOutput]:
        """The group spread over ranks: MuSc's rows where the images are, CLIP's per-image numbers gathered (the
        fusion normalises both over the whole group)."""
        mutual, pooled = self.musc.gathered_patch_scores(features.musc if features is not None else None, share)
        local = self._clip_stats(features.clip) if features is not None else (torch.empty(0), math.inf, -math.inf)
        every = share.comm.all_gather_object((local[0].tolist(), local[1], local[2]), "gathering CLIP scores")
        scores = torch.tensor([v for values, _, _ in every for v in values])
        lo, hi = min(e[1] for e in every), max(e[2] for e in every)
        if features is not None:
            yield from self._fused(features.clip, sizes, mutual, pooled, (scores, lo, hi), first=share.offset)

    def _clip_alone(self, clip: ClipEvidence, sizes: Sequence[tuple[int, int]]) -> Iterator[RawOutput]:
        for i, orig in enumerate(sizes):
            yield self.clip.raw_one(clip, i, orig, method=self.name, extras={"used": "clip"})

    def _clip_stats(self, clip: ClipEvidence) -> tuple[torch.Tensor, float, float]:
        """CLIP's image scores and the range of its maps over these images (maps are recomputed, not all kept)."""
        scores, lo, hi = [], math.inf, -math.inf
        for i in range(clip.global_prob.shape[0]):
            cmap = self.clip.maps_at_input_size(clip.patch_probs[i][None])
            scores.append(self.clip.image_score(float(clip.global_prob[i]), float(cmap.max())))
            lo, hi = min(lo, float(cmap.min())), max(hi, float(cmap.max()))
        return torch.tensor(scores, dtype=torch.float64), lo, hi

    def _fused(self, clip: ClipEvidence, sizes: Sequence[tuple[int, int]], mutual: MutualScores,
               pooled: torch.Tensor, clip_stats: tuple[torch.Tensor, float, float], first: int) -> Iterator[RawOutput]:
        """Outputs of group images ``first ..`` (``clip`` and ``sizes`` hold just those; the MuSc patch scores,
        embeddings and CLIP statistics cover the whole group)."""
        w = self.config.musc_weight
        size = self.backbone.image_size
        musc_patch = mutual.patch
        musc_scores, (m_lo, m_hi) = self.musc.image_scores(musc_patch, pooled, mutual)
        clip_scores, c_lo, c_hi = clip_stats
        clip_norm = _minmax(clip_scores.float())
        musc_norm = _minmax(musc_scores)
        m_span, c_span = float(m_hi - m_lo) or 1.0, (c_hi - c_lo) or 1.0
        for i, orig in enumerate(sizes):
            g = first + i
            musc_map = (grid_to_image(musc_patch[g][None], size, align_corners=True) - m_lo) / m_span
            clip_map = (self.clip.maps_at_input_size(clip.patch_probs[i][None]) - c_lo) / c_span
            fused_map = w * musc_map + (1 - w) * clip_map
            score = w * float(musc_norm[g]) + (1 - w) * float(clip_norm[g])
            extras = {"used": "musc+clip", "musc_score": float(musc_norm[g]), "clip_score": float(clip_norm[g]),
                      "activation": self.backbone.activation}
            if mutual.findings is not None:
                extras.update(mutual.findings.extras(g))
            yield RawOutput(image_score=score, anomaly_map=to_original_size(fused_map, [orig])[0], method=self.name,
                            defect_probs=clip.defect_probs[i], extras=extras)
