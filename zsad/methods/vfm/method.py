"""``vfm``: AnomalyVFM (Fučka, Zavrtanik, Skočaj, CVPR 2026; MaticFuc/AnomalyVFM), one image at a time.

A frozen vision foundation model (RADIO v2.5-L at 768 px, published setting) with DoRA adapters on its attention
weights, a small convolutional mask decoder on its patch features and a linear head on its summary, trained once
on synthetic defects (``zsad train-vfm``) or imported from the released checkpoints (``zsad adapters
import-anomalyvfm``). Needs an adapter (``--adapter DIR``); on a backbone with random weights and no adapter it runs
with seeded random adapters (smoke runs and tests; meaningless scores).

Scoring as the code behind the published numbers (``test.py``): image score = sigmoid of the head on the summary
(the map plays no part); map = sigmoid of the mask logits, a 5 x 5 mean filter at twice the patch grid (96 x 96),
then bilinear to the image's size (anomalib's port; ``test.py`` measures at 96 x 96). The adapters are folded into
the backbone's weights once (:func:`~zsad.methods.vfm.dora.fold`), so the forward is a plain ViT. Options:
``kernel`` (the mean filter, 5), ``order`` (``sigmoid-pool``; ``pool-sigmoid`` is ``predict_single_image.py``'s) and
``pos_interpolation`` (RADIO's position table: ``bilinear``, the torch-hub model the published numbers ran;
``bicubic``, ``radio_local.py`` of the Hugging Face release and anomalib). On CUDA ``--precision auto`` is fp16
autocast, as ``test.py``; the sigmoid, filter and resize run in fp32.

Other backbones (:mod:`~zsad.methods.vfm.families`): on a timm DINOv2/DINOv3 the summary is the final normed class
token and the features the normed patch tokens, on an open_clip CLIP the class token and patch tokens of the last
block before ``ln_post`` (the official ``models/dinov2.py``, ``dinov3.py``, ``clip.py``); every family's images are
squash-resized bilinearly and its position table resized as its official model does (``pos_interpolation_for``).
On CPU in fp32 the folded backbone's linear layers run on oneDNN (``onednn``, :mod:`zsad.backbones.cpu_linear`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from zsad.backbones.base import Backbone
from zsad.backbones.cpu_linear import use_onednn
from zsad.backbones.names import BackboneSpec
from zsad.device import autocast
from zsad.errors import AdapterError, UsageError
from zsad.methods.base import Method
from zsad.methods.vfm.adapter import KIND, VfmAdapter, VfmSettings, load_vfm_adapter, random_modules
from zsad.methods.vfm.decoder import ORDERS, logits_to_map
from zsad.methods.vfm.dora import fold
from zsad.methods.vfm.families import RESIZE_FILTER, pos_interpolation_for
from zsad.methods.vfm.features import vfm_features
from zsad.scoring.maps import to_original_size
from zsad.types import RawOutput

log = logging.getLogger(__name__)

NEEDS_ADAPTER = (
    "method 'vfm' needs a trained AnomalyVFM adapter: pass --adapter DIR (Python: adapter=DIR). Convert a released "
    "checkpoint with `zsad adapters import-anomalyvfm model.safetensors --out adapters/NAME`, or train one with "
    "`zsad train-vfm --data ROOT --out adapters/NAME --backbone {backbone}`"
)


@dataclass(frozen=True)
class VfmConfig:
    adapter: str | None = None
    #: the map's mean filter (official ``--mean-kernel-size``); 1: none
    kernel: int = 5
    #: ``sigmoid-pool`` (``test.py``, published) or ``pool-sigmoid`` (``predict_single_image.py``)
    order: str = "sigmoid-pool"
    #: RADIO's position-table resize: None (the backbone's; bilinear as published), ``bilinear`` or ``bicubic``
    pos_interpolation: str | None = None
    #: the folded backbone's linear layers through oneDNN on CPU in fp32 (:mod:`zsad.backbones.cpu_linear`: about
    #: 2x the backbone's speed on AMD CPUs, outputs within 1e-6 of ``F.linear``'s); False: ``F.linear``
    onednn: bool = True


class VfmMethod(Method):
    name = "vfm"
    summary = ("AnomalyVFM (CVPR 2026): DoRA-adapted RADIO + mask decoder, one image at a time (needs an adapter; "
               "RADIO weights are non-commercial)")
    needs_text = False
    exportable = True
    #: ``zsad export`` writes the whole method (folded adapters, decoder, head, map filter) as the graph
    graph_outputs = ("scores", "maps")
    adapter_kind = KIND
    #: the torch-hub RADIO the published numbers ran resizes its position table bilinearly
    pos_interpolation = "bilinear"
    config_class = VfmConfig
    default_backbone = "radio:v2.5-l"
    default_image_size = 768

    @classmethod
    def pos_interpolation_for(cls, backbone: str | BackboneSpec) -> str:
        """Each official family's own position-table resize (:mod:`~zsad.methods.vfm.families`)."""
        return pos_interpolation_for(backbone)

    def __init__(self, backbone: Backbone, *, dtype: torch.dtype, config: VfmConfig | None = None) -> None:
        super().__init__(backbone, dtype=dtype)
        self.config = config = config or VfmConfig()
        if config.order not in ORDERS:
            raise UsageError(f"method 'vfm': unknown order '{config.order}' (use {' or '.join(ORDERS)})")
        logits_to_map(torch.zeros(1, 1, 1, 1), config.kernel, config.order)  # checks the filter size
        self.exported = backbone.export is not None and backbone.export.manifest.graph == "method"
        if self.exported:
            self.settings = VfmSettings.from_config(backbone.export.manifest.adapter["settings"],
                                                    str(backbone.export.path))
            return
        adapter = self._adapter(backbone)
        modules = adapter.modules.to(backbone.device).eval().requires_grad_(False)
        if config.pos_interpolation:
            if not hasattr(backbone, "with_pos_interpolation"):
                raise UsageError(f"method 'vfm': pos_interpolation applies to RADIO backbones, not "
                                 f"'{backbone.spec.name}'")
            backbone = backbone.with_pos_interpolation(config.pos_interpolation)
        self.settings = adapter.settings
        self.backbone = fold(backbone, modules.dora)
        self.backbone.resize_filter = RESIZE_FILTER  # the folded copy is this method's own
        if config.onednn:
            use_onednn(self.backbone)
        self.decoder = modules.decoder
        self.head = modules.head

    def _adapter(self, backbone: Backbone) -> VfmAdapter:
        path = self.config.adapter
        if not path:
            if not backbone.random_weights:
                raise AdapterError(NEEDS_ADAPTER.format(backbone=backbone.spec.name))
            log.info("vfm on random backbone weights without an adapter: random adapters (smoke run)")
            modules = random_modules(backbone)
            return VfmAdapter(settings=modules.settings, modules=modules)
        adapter = load_vfm_adapter(path, backbone)
        if adapter.settings.image_size != backbone.image_size:
            log.warning("adapter %s was trained at %d px and is used at %d px", path, adapter.settings.image_size,
                        backbone.image_size)
        return adapter

    # -- the whole model -----------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed images ``[B, 3, S, S]`` -> (image scores ``[B]``, maps ``[B, 2g, 2g]``): everything but the
        resize to each image's size (the graph ``zsad export`` writes)."""
        summary, logits = self.logits(images)
        return summary.sigmoid(), logits_to_map(logits, self.config.kernel, self.config.order)

    def logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image logits ``[B]``, mask logits ``[B, 1, 2g, 2g]``) in the compute dtype."""
        summary, spatial = self.features(images)
        return self.head(summary).squeeze(-1).float(), self.decoder.mask_logits(spatial)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summary ``[B, D]``, patch features ``[B, C, g, g]``) of the adapted backbone's last block."""
        return vfm_features(self.backbone, images)

    # -- the method steps ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.exported:
            out = self.backbone.run_graph(images)
            return out["scores"].float(), out["maps"].float()
        with autocast(self.device, self.dtype):
            scores, maps = self(images.to(self.device))
        return scores.float().cpu(), maps.float().cpu()

    @staticmethod
    def combine(chunks: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([s for s, _ in chunks]), torch.cat([m for _, m in chunks])

    def raw(self, features: tuple[torch.Tensor, torch.Tensor], sizes: Sequence[tuple[int, int]]) -> Iterator[RawOutput]:
        scores, maps = features
        for i, size in enumerate(sizes):
            yield RawOutput(image_score=float(scores[i]), anomaly_map=to_original_size(maps[i][None], [size])[0],
                            method=self.name, extras={"map_max": float(maps[i].max())})

