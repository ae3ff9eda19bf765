"""AnomalyVFM's two inputs from a backbone's last block, for scoring, training and the equality checks."""

from __future__ import annotations

import torch

from zsad.backbones.base import Backbone


def vfm_features(backbone: Backbone, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summary ``[B, D]``, patch features ``[B, C, g, g]``): the summary is ``cls_raw`` (RADIO: its three summary
    tokens concatenated; a ViT: its class token), the features the last block's patch tokens (official
    ``models/radio.py``, ``models/dinov2.py``, ``models/clip.py``)."""
    last = backbone.num_layers - 1
    out = backbone.tokens(images, [last])
    patches = out.layers[last][:, 1:]
    batch, tokens, width = patches.shape
    side = int(round(tokens ** 0.5))
    return out.cls_raw, patches.transpose(1, 2).reshape(batch, width, side, side)
