"""Pure functions on anomaly maps: patch grid -> input size -> smoothing -> original resolution."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def grid_to_image(patch_scores: torch.Tensor, size: int, align_corners: bool = False) -> torch.Tensor:
    """``[B, L]`` patch scores on a square grid -> ``[B, size, size]`` by bilinear upsampling.

    AnomalyCLIP upsamples with ``align_corners=False``; MuSc with ``align_corners=True``.
    """
    batch, tokens = patch_scores.shape
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} patch scores do not form a square grid")
    grid = patch_scores.float().reshape(batch, 1, side, side)
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=align_corners)[:, 0]


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-map Gaussian smoothing with scipy (AnomalyCLIP uses ``gaussian_filter(sigma=4)`` at 518 px)."""
    if sigma <= 0:
        return maps
    smoothed = [ndimage.gaussian_filter(m, sigma=sigma) for m in maps.detach().cpu().numpy()]
    return torch.from_numpy(np.stack(smoothed)).to(maps.device)


def to_original_size(maps: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """``[B, S, S]`` maps at the squash-resized input size -> one ``H x W`` float32 array per image.

    ``sizes`` are ``(width, height)``; the inverse of the squash resize is a plain bilinear resize.
    """
    out = []
    for m, (width, height) in zip(maps.detach().float().cpu(), sizes):
        resized = F.interpolate(m[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        out.append(resized.numpy().astype(np.float32, copy=False))
    return out
