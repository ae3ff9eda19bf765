"""AnomalyCLIP's image side: DPAM patch features, the global feature, and the state probabilities.

Source: zqhang/AnomalyCLIP ``AnomalyCLIP_lib/AnomalyCLIP.py`` (``VisionTransformer.forward``), ``train.py`` and
``test.py``. The V-V (DPAM) stream is :meth:`ClipBackbone.tokens` with ``vv=True`` (checked against the official
dual-path blocks in ``tests/test_anomalyclip.py``). Patch features: tapped V-V tokens through ``ln_post`` and
``proj``. Global feature: the *original* stream's final class token through ``proj`` without ``ln_post``
(official issue #14). Every similarity is ``cos / 0.07`` (not ``logit_scale``), softmaxed over
[normal, anomalous] per patch, and the probabilities are upsampled bilinearly (``align_corners=False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zsad.backbones.base import Backbone
from zsad.device import autocast
from zsad.errors import UsageError
from zsad.scoring.maps import grid_to_image

TEMPERATURE = 0.07
#: The official ``DPAM_layer=20`` turns the last 19 of 24 vision blocks into dual-path blocks.
DEFAULT_DPAM_FRACTION = 19 / 24


@dataclass
class ImageFeatures:
    """L2-normalised features of one batch: ``global_`` ``[B, D]``, ``patches`` one ``[B, L, D]`` per tap."""

    global_: torch.Tensor
    patches: list[torch.Tensor]


def resolve_dpam_layers(backbone: Backbone, dpam_layers: int | None) -> int:
    """How many of the last vision blocks run the V-V path: None = 19 of 24, scaled to the depth."""
    depth = backbone.num_layers
    if dpam_layers is None:
        return round(depth * DEFAULT_DPAM_FRACTION)
    if not 0 <= dpam_layers <= depth:
        raise UsageError(f"DPAM over the last {dpam_layers} blocks is impossible for a {depth}-block vision tower "
                         f"(use 0..{depth})")
    return dpam_layers


def resolve_taps(backbone: Backbone, taps: str | Sequence[int]) -> list[int]:
    """0-based tapped blocks: ``"last"`` (released checkpoints: layer 24 of 24), ``"paper"`` (4 evenly spread,
    6/12/18/24 of 24) or explicit indices (negative count from the end)."""
    if isinstance(taps, str):
        name = taps.strip().lower()
        if name == "last":
            return [backbone.num_layers - 1]
        if name == "paper":
            return backbone.default_layers(4)
        try:
            taps = [int(t) for t in name.replace(",", " ").split()]
        except ValueError:
            raise UsageError(f"taps must be 'last', 'paper' or 0-based block numbers like 5,11,17,23; got {taps!r}") from None
    if not taps:
        raise UsageError("at least one tapped block is needed")
    return sorted(set(backbone.check_layers(taps)))


def image_features(backbone: Backbone, images: torch.Tensor, taps: Sequence[int], dpam_layers: int,
                   dtype: torch.dtype) -> ImageFeatures:
    """One backbone pass (no gradients reach the backbone): normalised global and tapped patch features."""
    visual = backbone.model.visual
    with autocast(backbone.device, dtype):
        out = backbone.tokens(images, list(taps), vv=dpam_layers > 0, vv_start=backbone.num_layers - dpam_layers)
        glob = out.cls_raw @ visual.proj if visual.proj is not None else out.cls_raw  # no ln_post (official #14)
        patches = [backbone.project_patches(out.layers[t][:, 1:]) for t in taps]
    return ImageFeatures(global_=F.normalize(glob.float(), dim=-1),
                         patches=[F.normalize(p.float(), dim=-1) for p in patches])


def state_logits(features: torch.Tensor, text: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """``[..., D] x [2, D] -> [..., 2]`` logits ``cos / temperature`` (``text`` rows normalised here)."""
    return features @ F.normalize(text.float(), dim=-1).T / temperature


def probability_maps(patch_features: torch.Tensor, text: torch.Tensor, size: int,
                     temperature: float = TEMPERATURE) -> torch.Tensor:
    """``[B, L, D]`` -> ``[B, 2, size, size]``: per-patch softmax over [normal, anomalous], *then* bilinear
    upsampling (the official order)."""
    probs = state_logits(patch_features, text, temperature).softmax(-1)  # [B, L, 2]
    batch = probs.shape[0]
    flat = probs.permute(0, 2, 1).reshape(batch * 2, -1)
    return grid_to_image(flat, size).reshape(batch, 2, size, size)
