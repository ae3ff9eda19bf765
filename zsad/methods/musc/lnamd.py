"""MuSc stage 1, LNAMD: local neighbourhood aggregation of patch tokens with degree r (``_LNAMD.py``).

Li et al., "MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with Mutual Scoring of the Unlabeled
Images", ICLR 2024 (arXiv 2401.16753); official code github.com/xrli-U/MuSc, written from scratch; where paper and
code differ this module follows the code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from zsad.errors import UsageError

# ----------------------------------------------------------------------------------------------------------------
# LNAMD
# ----------------------------------------------------------------------------------------------------------------


def _check_degree(r: int) -> None:
    if not isinstance(r, int) or r < 1 or r % 2 == 0:
        raise UsageError(f"LNAMD aggregation degree r must be a positive odd integer, got {r!r}")


def _grid_side(num_patches: int) -> int:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise UsageError(f"patch tokens must form a square grid without a class token; got L={num_patches} tokens")
    return side


def lnamd(patch_tokens: Tensor, r: int) -> Tensor:
    """Local Neighbourhood Aggregation with Multiple Degrees (paper Sec. 3.2; official ``_LNAMD.py``).

    Per image: parameter-free LayerNorm over (C, H, W) with eps 1e-5, then the mean over each r x r window
    (stride 1, zero padding (r-1)/2, padded zeros counted: the official unfold + ``adaptive_avg_pool1d`` equals
    ``avg_pool2d(count_include_pad=True)``), then L2 normalisation of every patch vector (``musc.py``).
    Always computed in fp32.

    Args:
        patch_tokens: ``[B, L, C]`` tokens of one layer, L = H*H, class token already removed.
        r: odd aggregation degree (MuSc uses 1, 3 and 5).

    Returns:
        ``[B, L, C]`` fp32 unit vectors on the input's device.
    """
    _check_degree(r)
    if patch_tokens.dim() != 3:
        raise UsageError(f"patch_tokens must be [B, L, C], got shape {tuple(patch_tokens.shape)}")
    b, num_patches, c = patch_tokens.shape
    side = _grid_side(num_patches)
    x = patch_tokens.to(torch.float32).transpose(1, 2).reshape(b, c, side, side)
    x = F.layer_norm(x, (c, side, side), eps=1e-5)
    if r > 1:
        x = F.avg_pool2d(x, kernel_size=r, stride=1, padding=(r - 1) // 2, count_include_pad=True)
    x = x.flatten(2).transpose(1, 2)
    return F.normalize(x, dim=-1)


