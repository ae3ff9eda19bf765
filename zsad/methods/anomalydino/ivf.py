"""An inverted-file index over a reference bank, for banks too large to search exhaustively at the speed a few-shot
user expects (``search="ivf"``).

Why: the exact search costs ``L x M x C`` multiply-adds per image; with ViT-S/14 at 448 (L = 1024, C = 384) and
16 references x 8 rotations (M = 131,072 rows) that is 51 GMAC, more than the backbone's own forward. Here the bank
is split into ``lists`` clusters by spherical k-means (seeded, on at most ``train_rows`` rows); a query patch is
compared with the centroids, then exhaustively with the rows of its ``probe`` nearest clusters, grouped by cluster so
each cluster's rows are one matrix product with all the queries that probe it. Distances of the rows it compares are
exact fp32 ``1 - cos``; what it can miss is a nearest row in a cluster it did not probe, so a patch's distance can
only come out larger than the exact one (by how much is measured in ``evaluation/RESULTS.md``). The official code
searches exhaustively (faiss ``IndexFlatL2``); ``search="exact"`` does the same here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_PROBE = 16


@dataclass
class IvfIndex:
    """Centroids ``[n, C]`` and the bank rows sorted by cluster (``order``; cluster ``i`` holds
    ``order[offsets[i]:offsets[i + 1]]``), the rows themselves stored in that order."""

    centroids: Tensor
    rows: Tensor  # [M, C] unit bank rows in cluster order
    order: Tensor  # [M] bank row index of each stored row
    offsets: Tensor  # [n + 1] (on the host)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.centroids, self.rows, self.order))


def _assign(x: Tensor, centroids: Tensor, tile: int = 1 << 14) -> Tensor:
    return torch.cat([(x[i:i + tile] @ centroids.T).argmax(dim=1) for i in range(0, x.shape[0], tile)])


def build_ivf(features: Tensor, *, lists: int | None = None, iterations: int = 8, train_rows: int = 65536,
              seed: int = 0) -> IvfIndex:
    """Spherical k-means on (a seeded sample of) the unit ``[M, C]`` bank rows (in fp32), then every row to its
    cluster. ``lists`` defaults to ``sqrt(M)`` rounded, at least 1."""
    stored = features
    features = features.float()
    m = features.shape[0]
    lists = max(1, min(m, lists or round(math.sqrt(m))))
    gen = torch.Generator().manual_seed(seed)
    sample = features if m <= train_rows else features[torch.randperm(m, generator=gen)[:train_rows].to(features.device)]
    centroids = sample[torch.randperm(sample.shape[0], generator=gen)[:lists].to(features.device)].clone()
    for _ in range(iterations):
        label = _assign(sample, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, label, sample)
        count = torch.bincount(label, minlength=lists)
        empty = count == 0
        if empty.any():  # re-seed empty clusters with random sample rows
            pick = torch.randint(0, sample.shape[0], (int(empty.sum()),), generator=gen).to(features.device)
            sums[empty] = sample[pick]
        centroids = F.normalize(sums, dim=1)
    label = _assign(features, centroids)
    order = torch.argsort(label, stable=True)
    counts = torch.bincount(label, minlength=lists).cpu()
    offsets = torch.zeros(lists + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    return IvfIndex(centroids=centroids, rows=stored[order].contiguous(), order=order, offsets=offsets)


def ivf_search(queries: Tensor, index: IvfIndex, owner: Tensor, *, k: int = 1, probe: int = DEFAULT_PROBE,
               exclude_owner: int | None = None) -> Tensor:
    """``[Q]`` mean ``1 - cos`` of each unit query row to its ``k`` nearest rows among its ``probe`` nearest
    clusters (``owner`` [M]: the reference of each bank row; rows of ``exclude_owner`` left out)."""
    q = queries
    lists = index.centroids.shape[0]
    probe = min(probe, lists)
    probed = (q @ index.centroids.T).topk(probe, dim=1).indices  # [Q, probe]
    flat = probed.reshape(-1)
    query_of = torch.arange(q.shape[0], device=q.device).repeat_interleave(probe)
    by_list = torch.argsort(flat, stable=True)
    flat, query_of = flat[by_list].cpu(), query_of[by_list]
    starts = torch.searchsorted(flat, torch.arange(lists + 1))
    best = torch.full((q.shape[0], k), -math.inf, device=q.device)
    stored_owner = owner[index.order]
    for c in torch.nonzero(starts[1:] > starts[:-1]).flatten().tolist():
        rows = slice(int(index.offsets[c]), int(index.offsets[c + 1]))
        if rows.stop == rows.start:
            continue
        who = query_of[int(starts[c]):int(starts[c + 1])]
        sims = q[who] @ index.rows[rows].float().T
        if exclude_owner is not None:
            sims.masked_fill_(stored_owner[rows][None] == exclude_owner, -math.inf)
        if k == 1:
            best[who] = torch.maximum(best[who], sims.max(dim=1, keepdim=True).values)
        else:
            best[who] = torch.cat([best[who], sims], dim=1).topk(k, dim=1).values
    return (1.0 - best).clamp_min(0.0).mean(dim=1)
