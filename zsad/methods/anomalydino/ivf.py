"""An inverted-file index over a reference bank, for banks too large to search exhaustively at the speed a few-shot
user expects (``search="ivf"``).

Why: the exact search costs ``L x M x C`` multiply-adds per image; with ViT-S/14 at 448 (L = 1024, C = 384) and
16 references x 8 rotations (M = 131,072 rows) that is 51 GMAC, more than the backbone's own forward. Here the bank
is split into ``lists`` clusters by spherical k-means (seeded, on at most ``train_rows`` rows); a query patch is
compared with the centroids, then exhaustively with the rows of its ``probe`` nearest clusters, grouped by cluster so
each cluster's rows are one matrix product with all the queries that probe it. The index holds row numbers only
(8 bytes a row), never a second copy of the bank. Distances of the rows it compares are
exact fp32 ``1 - cos``; what it can miss is a nearest row in a cluster it did not probe, so a patch's distance can
only come out larger than the exact one (by how much is measured in ``evaluation/RESULTS.md``). The official code
searches exhaustively (faiss ``IndexFlatL2``); ``search="exact"`` does the same here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_PROBE = 16


@dataclass
class IvfIndex:
    """Centroids ``[n, C]`` and the bank's row indices sorted by cluster: cluster ``i`` holds the bank rows
    ``order[offsets[i]:offsets[i + 1]]``. The bank itself stays where it is (no second copy of it, ever)."""

    centroids: Tensor
    order: Tensor  # [M] bank row indices, cluster by cluster
    offsets: Tensor  # [n + 1] (on the host)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.centroids, self.order, self.offsets))


def _assign(x: Tensor, centroids: Tensor, tile: int = 1 << 14) -> Tensor:
    """Nearest centroid of each row, in fp32 tiles (a fp16 bank is never converted whole)."""
    return torch.cat([(x[i:i + tile].float() @ centroids.T).argmax(dim=1) for i in range(0, x.shape[0], tile)])


def build_ivf(features: Tensor, *, lists: int | None = None, iterations: int = 8, train_rows: int = 65536,
              seed: int = 0) -> IvfIndex:
    """Spherical k-means on a seeded sample of at most ``train_rows`` of the unit ``[M, C]`` bank rows (fp32), then
    every row to its cluster. ``lists`` defaults to ``sqrt(M)`` rounded, at least 1."""
    m = features.shape[0]
    lists = max(1, min(m, lists or round(math.sqrt(m))))
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(m, generator=gen)[:train_rows] if m > train_rows else torch.arange(m)
    sample = features[pick.to(features.device)].float()
    centroids = sample[torch.randperm(sample.shape[0], generator=gen)[:lists].to(features.device)].clone()
    for _ in range(iterations):
        label = _assign(sample, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, label, sample)
        empty = torch.bincount(label, minlength=lists) == 0
        if empty.any():  # re-seed empty clusters with random sample rows
            draw = torch.randint(0, sample.shape[0], (int(empty.sum()),), generator=gen).to(features.device)
            sums[empty] = sample[draw]
        centroids = F.normalize(sums, dim=1)
    del sample
    label = _assign(features, centroids)
    order = torch.argsort(label, stable=True)
    offsets = torch.zeros(lists + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.bincount(label, minlength=lists).cpu(), 0)
    return IvfIndex(centroids=centroids, order=order, offsets=offsets)


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[int]:
    """Torch's CPU ops on one thread for the duration (restored after); yields how many threads torch had. The
    per-cluster loop is hundreds of small products and reductions, where OpenMP's fork and barrier cost more than
    the arithmetic (on the 2-core dev machine under load one search took 0.19 s on one thread, 1.3-1.8 s on two):
    the clusters are shared out to that many Python threads instead, each running its ops inline."""
    before = torch.get_num_threads()
    if device.type != "cpu":
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def ivf_search(queries: Tensor, features: Tensor, index: IvfIndex, owner: Tensor, *, k: int = 1,
               probe: int = DEFAULT_PROBE, exclude_owner: int | None = None,
               tile_elements: int = 1 << 22) -> Tensor:
    """``[Q]`` mean ``1 - cos`` of each unit query row to its ``k`` nearest bank rows (``features`` [M, C],
    ``owner`` [M]: the reference of each row; rows of ``exclude_owner`` left out) among its ``probe`` nearest
    clusters; at most ``tile_elements`` similarities per worker at once."""
    from concurrent.futures import ThreadPoolExecutor

    q = queries
    lists = index.centroids.shape[0]
    probe = min(probe, lists)
    with _one_cpu_thread(q.device) as workers:
        probed = (q @ index.centroids.T).topk(probe, dim=1).indices  # [Q, probe], nearest first
        # a row budget: what ``probe`` clusters of the mean size hold. Near-identical patches (a plain background)
        # make a few clusters far larger than the mean; a query whose nearest clusters are those scans them and
        # stops there instead of scanning ``probe`` of them (the nearest cluster is always scanned)
        sizes = (index.offsets[1:] - index.offsets[:-1]).to(q.device)[probed]
        keep = (sizes.cumsum(dim=1) - sizes) < probe * index.order.shape[0] / lists
        keep[:, 0] = True
        flat = probed[keep]
        query_of = torch.arange(q.shape[0], device=q.device).repeat_interleave(keep.sum(dim=1))
        by_list = torch.argsort(flat, stable=True)
        flat, query_of = flat[by_list].cpu(), query_of[by_list]
        starts = torch.searchsorted(flat, torch.arange(lists + 1))
        todo = torch.nonzero(starts[1:] > starts[:-1]).flatten().tolist()

        def scan(clusters: list[int]) -> Tensor:
            best = torch.full((q.shape[0], k), -math.inf, device=q.device)
            for c in clusters:
                rows = index.order[int(index.offsets[c]):int(index.offsets[c + 1])]
                if not len(rows):
                    continue
                who = query_of[int(starts[c]):int(starts[c + 1])]
                mine = q[who]
                step = max(k, tile_elements // len(who))  # an oversized cluster goes in tiles
                for r0 in range(0, len(rows), step):
                    part = rows[r0:r0 + step]
                    sims = mine @ features[part].float().T
                    if exclude_owner is not None:
                        sims.masked_fill_(owner[part][None] == exclude_owner, -math.inf)
                    if k == 1:
                        best[who] = torch.maximum(best[who], sims.max(dim=1, keepdim=True).values)
                    else:
                        best[who] = torch.cat([best[who], sims], dim=1).topk(k, dim=1).values
            return best

        shares = [todo[w::workers] for w in range(max(1, workers))]
        if len(shares) == 1:
            bests = [scan(shares[0])]
        else:
            with ThreadPoolExecutor(len(shares)) as pool:
                bests = list(pool.map(scan, shares))
        best = torch.cat(bests, dim=1).topk(k, dim=1).values
    return (1.0 - best).clamp_min(0.0).mean(dim=1)
