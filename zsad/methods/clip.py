"""Training-free CLIP scoring: prompt ensembles against value-value patch tokens.

Text: WinCLIP's compositional ensemble (states x templates), each sentence embedding L2-normalised, averaged
and renormalised (Jeong et al., CVPR 2023). Patches: V-V tokens (CLIP Surgery / AnomalyCLIP DPAM) of several
blocks through ``ln_post`` and ``proj``. Per patch, ``softmax(cos / 0.07)`` over [normal, anomalous]
(AnomalyCLIP's temperature, not ``logit_scale``); probabilities are averaged over the tapped blocks, then
upsampled bilinearly and smoothed with a Gaussian (sigma 4 at 518 px, scaled with the input size).

Image score: ``0.5 * (global + max(map))``, where ``global`` is the anomalous probability of the standard
CLIP image embedding. Taking the map maximum catches small defects that the global embedding misses; the
global term keeps image-level evidence (the FAPrompt / AdaCLIP-style fusion; AnomalyCLIP uses global only).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zsad.backbones.base import Backbone, TokenOutput
from zsad.device import autocast
from zsad.methods.base import Method
from zsad.prompts import PromptBank, load_prompt_bank
from zsad.scoring.maps import gaussian_smooth, grid_to_image, to_original_size
from zsad.types import RawOutput


@dataclass(frozen=True)
class ClipConfig:
    """Knobs of the training-free method; defaults follow the published settings named in the module doc."""

    layers: tuple[int, ...] | None = None  # 0-based blocks; None = 4 evenly spread, e.g. [5, 11, 17, 23]
    vv: bool = True
    vv_start: int | None = None  # None = AnomalyCLIP's last 19 of 24 blocks, scaled to the depth
    temperature: float = 0.07
    sigma_at_518: float = 4.0
    defect_top_fraction: float = 0.1  # hottest patches pooled to name the defect type
    prompts: str | None = None  # a user YAML replacing bundled sections


@dataclass
class ClipEvidence:
    """What one pass yields per image: ``[B, L]`` patch and ``[B]`` global probabilities (CPU), defect probs."""

    patch_probs: torch.Tensor
    global_prob: torch.Tensor
    defect_probs: list[dict[str, float]]


def concat_evidence(chunks: Sequence[ClipEvidence]) -> ClipEvidence:
    return ClipEvidence(patch_probs=torch.cat([c.patch_probs for c in chunks]),
                        global_prob=torch.cat([c.global_prob for c in chunks]),
                        defect_probs=[p for c in chunks for p in c.defect_probs])


def ensemble_embedding(backbone: Backbone, sentences: Sequence[str]) -> torch.Tensor:
    """Mean of L2-normalised sentence embeddings, renormalised: ``[D]``."""
    emb = F.normalize(backbone.encode_text(sentences), dim=-1)
    return F.normalize(emb.mean(dim=0), dim=-1)


class ClipMethod(Method):
    name = "clip"
    summary = "training-free CLIP: prompt ensembles x value-value patch tokens"
    exportable = True
    config_class = ClipConfig

    def __init__(self, backbone: Backbone, *, dtype: torch.dtype, config: ClipConfig | None = None) -> None:
        super().__init__(backbone, dtype=dtype)
        self.config = config or ClipConfig()
        self.bank: PromptBank = load_prompt_bank(self.config.prompts)
        self.layers = list(self.config.layers) if self.config.layers else backbone.default_layers(4)
        self._state_text: dict[str, torch.Tensor] = {}
        self._defect_text: dict[str, tuple[list[str], torch.Tensor]] = {}

    @torch.inference_mode()
    def setup(self, class_name: str | None = None) -> None:
        """Compute (once per class name, then cached) the state and defect text embeddings."""
        super().setup(class_name)
        name = self.class_name
        if name not in self._state_text:
            normal, anomalous = self.bank.state_sentences(name)
            kinds = self.bank.defect_sentences(name)
            with autocast(self.device, self.dtype):
                states = [ensemble_embedding(self.backbone, normal), ensemble_embedding(self.backbone, anomalous)]
                defect = [ensemble_embedding(self.backbone, kinds[k]) for k in kinds]
            self._state_text[name] = torch.stack(states).float()
            self._defect_text[name] = (list(kinds), torch.stack(defect).float())

    def run_backbone(self, images: torch.Tensor, extra_layers: Sequence[int] = ()) -> TokenOutput:
        """One backbone pass with this method's V-V taps (plus ``extra_layers``, e.g. MuSc's, on the plain path)."""
        layers = sorted(set(self.layers) | set(extra_layers))
        with autocast(self.device, self.dtype):
            return self.backbone.tokens(images, layers, vv=self.config.vv, vv_start=self.config.vv_start)

    def evidence(self, out: TokenOutput) -> ClipEvidence:
        """Per-patch and global anomalous probabilities, and defect-type probabilities, from one pass."""
        text = self._state_text[self.class_name]
        with autocast(self.device, self.dtype):
            feats = [F.normalize(self.backbone.project_patches(out.layers[i][:, 1:]).float(), dim=-1)
                     for i in self.layers]
        probs = torch.stack([((f @ text.T) / self.config.temperature).softmax(-1)[..., 1] for f in feats]).mean(0)
        global_prob = ((F.normalize(out.pooled.float(), dim=-1) @ text.T) / self.config.temperature).softmax(-1)
        return ClipEvidence(patch_probs=probs.cpu(), global_prob=global_prob[:, 1].cpu(),
                            defect_probs=self.defect_probabilities(probs, feats[-1]))

    def maps_at_input_size(self, patch_probs: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` patch probabilities -> ``[B, S, S]`` upsampled and smoothed maps."""
        size = self.backbone.image_size
        return gaussian_smooth(grid_to_image(patch_probs, size), self.config.sigma_at_518 * size / 518)

    def defect_probabilities(self, patch_probs: torch.Tensor, feats: torch.Tensor) -> list[dict[str, float]]:
        """Name the defect: pool the hottest patches' features and score them against the defect vocabulary."""
        names, text = self._defect_text[self.class_name]
        k = max(1, int(round(self.config.defect_top_fraction * patch_probs.shape[1])))
        top = patch_probs.topk(k, dim=1).indices
        pooled = F.normalize(torch.gather(feats, 1, top[..., None].expand(-1, -1, feats.shape[-1])).mean(1), dim=-1)
        probs = ((pooled @ text.T) / self.config.temperature).softmax(-1).cpu()
        return [{n: float(p) for n, p in zip(names, row)} for row in probs]

    @staticmethod
    def image_score(global_prob: float, map_max: float) -> float:
        """The image score rule of the module doc: ``0.5 * (global + map max)``."""
        return 0.5 * (global_prob + map_max)

    def raw_one(self, ev: ClipEvidence, index: int, size: tuple[int, int], *, method: str | None = None,
                extras: dict | None = None) -> RawOutput:
        """Image ``index`` of ``ev``: its map, and the fused score ``0.5 * (global + map max)``."""
        amap = self.maps_at_input_size(ev.patch_probs[index][None])
        global_prob, map_max = float(ev.global_prob[index]), float(amap.max())
        return RawOutput(
            image_score=self.image_score(global_prob, map_max), anomaly_map=to_original_size(amap, [size])[0],
            method=method or self.name, defect_probs=ev.defect_probs[index],
            extras={"global_score": global_prob, "map_max": map_max, "activation": self.backbone.activation,
                    **(extras or {})},
        )

    def ensure_text(self) -> None:
        """The current class's text embeddings, computed on first use (features extracted before ``setup``)."""
        if self.class_name not in self._state_text:
            self.setup(self.class_name)

    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> ClipEvidence:
        self.ensure_text()
        return self.evidence(self.run_backbone(images))

    combine = staticmethod(concat_evidence)

    def raw(self, features: ClipEvidence, sizes: Sequence[tuple[int, int]]) -> Iterator[RawOutput]:
        for i, size in enumerate(sizes):
            yield self.raw_one(features, i, size)
