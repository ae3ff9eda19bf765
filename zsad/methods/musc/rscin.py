"""MuSc stage 3, RsCIN: re-scoring image scores with constrained image-level neighbourhoods (``_RsCIN.py``).

Li et al., "MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with Mutual Scoring of the Unlabeled
Images", ICLR 2024 (arXiv 2401.16753); official code github.com/xrli-U/MuSc, written from scratch; where paper and
code differ this module follows the code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zsad.errors import BatchTooSmallError, UsageError

# ----------------------------------------------------------------------------------------------------------------
# RsCIN
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def rscin(scores: Tensor, image_embeddings: Tensor, ks: Sequence[int] = (1, 2, 3), *, normalize: bool = True,
          partition: Tensor | None = None, plain: Tensor | None = None) -> Tensor:
    """Re-scoring with Constrained Image-level Neighbourhood (paper Eq. 8-9; official ``_RsCIN.py`` ``MMO``).

    s_hat = min-max normalised scores; W = F F^T; for each k, W_k keeps each row's k largest entries (self
    included when F is normalised, since self is then the row maximum) and s_k = D_k^-1 W_k s_hat with D_k the row
    sums; the result is the mean of s_k over ``ks``. k = 1 returns s_hat.

    Deviations from the official code, all on inputs where it returns NaN or fails: k > N is clamped to N (every
    image in the window); constant scores give s_hat = 0 (official: 0/0); a row whose kept similarities sum to 0
    keeps its own s_hat. Ties in W may select other, equally similar neighbours than the official
    ``topk(N-k, largest=False)`` masking. ``ks`` must be >= 1 (the official config uses k = 0 to mean "skip
    RsCIN": the caller does that).

    Args:
        scores: ``[N]`` image scores.
        image_embeddings: ``[N, D]`` image embeddings (CLIP: pooled image embedding).
        ks: window sizes (MVTec/BTAD (1, 2, 3), VisA (1, 8, 9)).
        normalize: L2-normalise the embeddings first. ``musc.py`` normalises CLIP embeddings before RsCIN and uses
            DINO's class tokens raw; pass False to reproduce the latter.
        partition, plain: zsad's addition for repeated anomalies (:mod:`.repeats`): ``[N]`` labels (0: no repeated
            pattern) and ``[N]`` the scores before the pattern members were re-scored. An image of label 0 is
            smoothed exactly as without repeat scoring (members enter its window with their ``plain`` scores), so
            the other images keep their order; a member's window holds only members of its pattern. Min-max
            normalisation spans the whole batch (``scores`` and ``plain``). None: the official RsCIN.

    Returns:
        ``[N]`` in ``scores``' float dtype (fp32 for integer input), on ``scores.device``; computed in float64.
    """
    if scores.dim() != 1:
        raise UsageError(f"scores must be [N], got shape {tuple(scores.shape)}")
    n = scores.shape[0]
    if image_embeddings.dim() != 2 or image_embeddings.shape[0] != n:
        raise UsageError(f"image_embeddings must be [{n}, D], got shape {tuple(image_embeddings.shape)}")
    if n < 1:
        raise BatchTooSmallError("RsCIN needs at least one image")
    ks = list(ks)
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise UsageError(f"RsCIN window sizes must be positive integers, got {ks!r}")
    s = scores.detach().to(torch.float64)
    both = s if plain is None else torch.cat([s, plain.detach().to(s)])
    low, span = both.min(), both.max() - both.min()
    scale = torch.where(span > 0, span, torch.ones_like(span))
    s_hat = torch.where(span > 0, (s - low) / scale, torch.zeros_like(s))
    f = image_embeddings.detach().to(device=s.device, dtype=torch.float64)
    if normalize:
        f = F.normalize(f, dim=-1)
    w = f @ f.T
    out_dtype = scores.dtype if scores.is_floating_point() else torch.float32
    if partition is None:
        return _windows(s_hat, w, ks, n).to(out_dtype)
    label = partition.to(s.device)
    plain_hat = torch.where(span > 0, (plain.detach().to(s) - low) / scale, torch.zeros_like(s)) \
        if plain is not None else s_hat
    out = _windows(torch.where(label == 0, s_hat, plain_hat), w, ks, n)  # every image as without repeats
    for value in label.unique().tolist():
        if value == 0:
            continue
        members = (label == value).nonzero(as_tuple=True)[0]
        out[members] = _windows(s_hat[members], w[members][:, members], ks, members.numel())
    return out.to(out_dtype)


def _windows(s_hat: Tensor, w: Tensor, ks: Sequence[int], n: int) -> Tensor:
    """Mean over ``ks`` of the similarity-weighted mean of s_hat over each row's k most similar images."""
    total = torch.zeros_like(s_hat)
    for k in ks:
        vals, idx = w.topk(min(k, n), dim=1)  # [N, k] row's k largest similarities
        num = (vals * s_hat[idx]).sum(dim=1)
        den = vals.sum(dim=1)
        ok = den != 0
        total += torch.where(ok, num / torch.where(ok, den, 1.0), s_hat)
    return total / len(ks)
