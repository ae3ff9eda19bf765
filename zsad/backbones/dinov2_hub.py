"""A timm DINOv2 run on images of any size the way DINOv2's own hub model runs them.

Why: AnomalyDINO (dammsi/AnomalyDINO ``src/backbones.py``) loads ``torch.hub.load('facebookresearch/dinov2', ...)``
and feeds it images whose shorter side is 448 and whose longer side is whatever the aspect ratio gives (cropped to
a multiple of 14). The hub model keeps its native 37 x 37 position table and resamples it at every forward
(facebookresearch/dinov2 ``dinov2/models/vision_transformer.py``, ``interpolate_pos_encoding``): bicubic, no
antialiasing, with a *scale factor* of ``(grid + 0.1) / 37`` per side (the "historical kludge" offset), and no
resampling at all when the grid is the native square. timm resamples by output size with antialiasing, which gives
other position embeddings (and other features) at every size but the native one. So a backbone loaded with
``pos_interpolation="dinov2-hub"`` keeps the checkpoint's native table and resamples it here, as the hub does.

The blocks, norms and attention are timm's (the same arithmetic as the hub's: both call
``scaled_dot_product_attention``); only the patch embedding's size check and the position embedding differ from
timm's ``forward_features``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: ``pos_interpolation`` value of a timm backbone that resamples its native position table per input, as the hub
DINOV2_HUB = "dinov2-hub"
#: dinov2's ``interpolate_offset`` default (``dinov2/hub/backbones.py``)
HUB_OFFSET = 0.1


def hub_patch_positions(patch_pos: torch.Tensor, grid: tuple[int, int], offset: float = HUB_OFFSET) -> torch.Tensor:
    """``[1, M*M, C]`` native patch position embeddings -> ``[1, h*w, C]`` for a ``(h, w)`` grid, as the hub's
    ``interpolate_pos_encoding`` does (fp32, bicubic, ``scale_factor=((h + offset) / M, (w + offset) / M)``, no
    antialiasing; the native square grid is returned as it is)."""
    count = patch_pos.shape[1]
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"{count} patch position embeddings do not form a square grid")
    h, w = grid
    if (h, w) == (side, side):
        return patch_pos
    dim = patch_pos.shape[-1]
    table = patch_pos.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if offset:
        out = F.interpolate(table, scale_factor=((h + offset) / side, (w + offset) / side), mode="bicubic",
                            antialias=False)
    else:
        out = F.interpolate(table, size=(h, w), mode="bicubic", antialias=False)
    if tuple(out.shape[-2:]) != (h, w):
        raise ValueError(f"position embeddings resampled to {tuple(out.shape[-2:])}, expected {(h, w)}")
    return out.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(patch_pos.dtype)


def _embed(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch embedding, prefix tokens and hub-style position embeddings: ``[B, prefix + h*w, C]``."""
    patch = int(model.patch_embed.patch_size[0])
    _, _, height, width = images.shape
    if height % patch or width % patch:
        raise ValueError(f"input {height} x {width} is not a multiple of the patch size {patch}")
    grid = (height // patch, width // patch)
    x = model.patch_embed.proj(images).flatten(2).transpose(1, 2)
    x = model.patch_embed.norm(x)
    batch = x.shape[0]
    prefix = []
    if model.cls_token is not None:
        prefix.append(model.cls_token.expand(batch, -1, -1))
    if model.reg_token is not None:
        prefix.append(model.reg_token.expand(batch, -1, -1))
    pos = model.pos_embed
    if model.no_embed_class:  # positions for the patches only (timm's *_reg4_dinov2 layout)
        x = x + hub_patch_positions(pos, grid)
        return torch.cat([*prefix, x], dim=1)
    n_prefix = len(prefix)
    pos = torch.cat([pos[:, :n_prefix], hub_patch_positions(pos[:, n_prefix:], grid)], dim=1)
    return torch.cat([*prefix, x], dim=1) + pos


def hub_tokens(model: nn.Module, images: torch.Tensor, layers: Sequence[int]) -> tuple[dict[int, torch.Tensor],
                                                                                       torch.Tensor]:
    """Final-normed patch tokens ``[B, h*w, C]`` of the given 0-based blocks (DINOv2's ``get_intermediate_layers``
    with ``norm=True``: prefix tokens removed) and the final normed class token ``[B, C]``, for ``[B, 3, H, W]``
    images of any size that is a multiple of the patch size."""
    x = _embed(model, images)
    x = model.norm_pre(model.patch_drop(x))
    n_prefix = int(model.num_prefix_tokens)
    wanted = set(layers)
    taps: dict[int, torch.Tensor] = {}
    for index, block in enumerate(model.blocks):
        x = block(x)
        if index in wanted:
            taps[index] = model.norm(x)[:, n_prefix:]
    cls = model.norm(x)[:, 0]
    return taps, cls
