"""``anomalyclip``: object-agnostic learned prompts against DPAM patch tokens (Zhou et al., ICLR 2024).

Needs an adapter (``--adapter DIR``): prompts trained with ``zsad train-prompts`` or converted from the
released checkpoints with ``zsad adapters import-anomalyclip``. The prompts know no class name, so
``class_name`` is ignored.

Map: per tapped block, ``softmax(cos / 0.07)`` over [normal, anomalous] per patch, upsampled bilinearly,
averaged over the taps (the official code sums them: the same ranking, but a sum leaves [0, 1]) and smoothed
with a Gaussian (sigma 4 at 518 px, scaled with the input size).

Image score: AnomalyCLIP's own rule, the anomalous probability of the global feature (original-path class
token through ``proj``, no ``ln_post``) *only*; the map maximum is reported in ``extras["map_max"]`` but not
fused. Defect type: None (the learned prompts name no defect).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from zsad.backbones.base import Backbone
from zsad.errors import AdapterError
from zsad.methods.anomalyclip.adapter import KIND, PromptSettings, load_prompt_adapter
from zsad.methods.anomalyclip.forward import image_features, resolve_taps, state_logits
from zsad.methods.anomalyclip.prompts import PromptTextEncoder
from zsad.methods.base import Method
from zsad.scoring.maps import gaussian_smooth, grid_to_image, to_original_size
from zsad.types import RawOutput

log = logging.getLogger(__name__)

NEEDS_ADAPTER = (
    "method 'anomalyclip' needs learned prompts: pass --adapter DIR (Python: adapter=DIR). Train them with "
    "`zsad train-prompts --data ROOT --out adapters/NAME --backbone {backbone}`, or convert a released AnomalyCLIP "
    "checkpoint with `zsad adapters import-anomalyclip epoch_15.pth --out adapters/NAME` (see adapters/README.md)"
)


@dataclass(frozen=True)
class AnomalyClipConfig:
    adapter: str | None = None
    taps: str | tuple[int, ...] | None = None  # None: the adapter's taps
    sigma_at_518: float = 4.0


class AnomalyClipMethod(Method):
    name = "anomalyclip"
    summary = "AnomalyCLIP learned object-agnostic prompts (needs an adapter)"
    exportable = True
    adapter_kind = KIND
    pos_interpolation = "bilinear"  # the official code resizes position embeddings bilinearly
    config_class = AnomalyClipConfig

    def __init__(self, backbone: Backbone, *, dtype: torch.dtype, config: AnomalyClipConfig | None = None) -> None:
        super().__init__(backbone, dtype=dtype)
        self.config = config or AnomalyClipConfig()
        exported = backbone.export
        if exported is not None and "method.text" in exported.tensors:
            self._from_export(exported)
            return
        if not self.config.adapter:
            raise AdapterError(NEEDS_ADAPTER.format(backbone=backbone.spec.name))
        adapter = load_prompt_adapter(self.config.adapter, backbone)
        self.settings = adapter.settings
        if self.settings.image_size != backbone.image_size:
            log.warning("adapter %s was trained at %d px and is used at %d px", self.config.adapter,
                        self.settings.image_size, backbone.image_size)
        if self.settings.activation and self.settings.activation != backbone.activation:
            log.warning("adapter %s was trained with activation %s and is used with %s (--activation)",
                        self.config.adapter, self.settings.activation, backbone.activation)
        self.taps = (list(self.settings.taps) if self.config.taps is None
                     else resolve_taps(backbone, self.config.taps))
        self.learner = adapter.learner
        with torch.inference_mode():
            self.register_buffer("text", PromptTextEncoder(backbone, self.settings.shape)(self.learner).float(),
                                 persistent=False)

    def _from_export(self, exported) -> None:
        """The learned prompts' text embeddings, settings and taps stored by ``zsad export`` (no adapter, no text
        tower needed)."""
        adapter = exported.manifest.adapter
        self.settings = PromptSettings.from_config(adapter["settings"], str(exported.path))
        self.taps = list(adapter["taps"]) if self.config.taps is None else resolve_taps(self.backbone, self.config.taps)
        self.learner = None
        self.register_buffer("text", exported.tensors["method.text"].float(), persistent=False)

    def setup(self, class_name: str | None = None) -> None:
        super().setup(class_name)  # object-agnostic prompts: the class name changes nothing

    def evidence(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B]`` global anomalous probabilities and ``[B, L]`` patch probabilities averaged over the taps."""
        feats = image_features(self.backbone, images, self.taps, self.settings.dpam_layers, self.dtype)
        temperature = self.settings.temperature
        global_prob = state_logits(feats.global_, self.text, temperature).softmax(-1)[:, 1]
        patch = torch.stack([state_logits(p, self.text, temperature).softmax(-1)[..., 1] for p in feats.patches])
        return global_prob.cpu(), patch.mean(0).cpu()

    def maps_at_input_size(self, patch_probs: torch.Tensor) -> torch.Tensor:
        size = self.backbone.image_size
        return gaussian_smooth(grid_to_image(patch_probs, size), self.config.sigma_at_518 * size / 518)

    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.evidence(images)

    @staticmethod
    def combine(chunks: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([g for g, _ in chunks]), torch.cat([p for _, p in chunks])

    def raw(self, features: tuple[torch.Tensor, torch.Tensor], sizes: Sequence[tuple[int, int]]) -> Iterator[RawOutput]:
        global_prob, patch = features
        for i, size in enumerate(sizes):
            amap = self.maps_at_input_size(patch[i][None])[0]
            yield RawOutput(
                image_score=float(global_prob[i]), anomaly_map=to_original_size(amap[None], [size])[0],
                method=self.name, extras={"global_score": float(global_prob[i]), "map_max": float(amap.max()),
                                          "activation": self.backbone.activation},
            )
