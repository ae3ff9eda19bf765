"""AnomalyDINO's batched zero-shot patch distances (dammsi/AnomalyDINO ``run_anomalydino_batched.py``,
``calculate_cosine_distances``): each patch of an image against every patch of the OTHER images of the batch.

Per patch: the ``1 - cos`` distances to all ``n`` patches of the other images; ``k = int(0.001 * n)``; the patch's
distance is the mean of its distances strictly below the k-th smallest (``torch.kthvalue``, then ``d < kth``). The
official code builds the whole ``[L, n]`` matrix on the GPU; here the other images stream through in tiles of at
most ``tile_elements`` distances and a running k smallest is kept, which selects the same set. Where the official
rule is undefined (``k = 0``: ``kthvalue`` fails; nothing strictly below, e.g. ``k = 1``: 0 / 0), zsad takes the
k-th smallest itself (the nearest patch for ``k <= 1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from zsad.methods.anomalydino.search import DEFAULT_TILE_ELEMENTS

#: the official ``quantile`` of ``calculate_cosine_distances``
QUANTILE = 0.001


def mutual_distances(tokens: Sequence[torch.Tensor], rows: Sequence[int], *, quantile: float = QUANTILE,
                     tile_elements: int = DEFAULT_TILE_ELEMENTS, device: torch.device | str = "cpu",
                     progress=None) -> list[torch.Tensor]:
    """``[L_i]`` distances of every patch of the images ``rows`` against the patches of all other images (fp32, on
    the host)."""
    units = [F.normalize(t.to(device).float(), dim=-1) for t in tokens]
    total = sum(int(u.shape[0]) for u in units)
    out = []
    for i in rows:
        query = units[i]
        others = [u for j, u in enumerate(units) if j != i]
        n = total - int(query.shape[0])
        k = max(1, int(quantile * n))
        best = torch.empty(query.shape[0], 0, device=query.device)
        step = max(1, tile_elements // max(1, int(query.shape[0])))
        block: list[torch.Tensor] = []
        held = 0
        for j, other in enumerate(others):
            block.append(other)
            held += int(other.shape[0])
            if held < step and j + 1 < len(others):
                continue
            dist = 1.0 - query @ torch.cat(block).T
            best = torch.cat([best, dist], dim=1).topk(min(k, best.shape[1] + dist.shape[1]), dim=1,
                                                       largest=False).values
            block, held = [], 0
        kth = best[:, -1:]
        below = best < kth
        count = below.sum(dim=1)
        mean = (best * below).sum(dim=1) / count.clamp_min(1)
        out.append(torch.where(count > 0, mean, kth[:, 0]).cpu())
        if progress is not None:
            progress(1)
    return out
