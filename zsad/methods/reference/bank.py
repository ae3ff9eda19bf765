"""A memory bank of known-good patch features and the tiled nearest-neighbour search over it.

Why tiled: K references at ViT-L/14 518 px hold K * 1369 patches per (degree, layer); a full ``[L, K*L]`` distance
matrix is 1369 * 87,616 floats (480 MB) at K = 64, per image and per pair of (r, layer). The search below never
holds more than ``query_tile x bank_tile`` similarities; it finds each query's best bank row by cosine (in the
bank's dtype: fp16 on CUDA), then re-computes that one distance in fp32, so the returned distances are exact up to
the bank's storage rounding.

Bank rows remember their image (``owner``) and grid position (``position``), so a reference can be scored against
the others while its own patches are left out (leave-one-out calibration), or against itself away from its own
neighbourhood (one reference).

Greedy coreset (PatchCore, Roth et al. CVPR 2022): when a bank is larger than its budget, keep the rows chosen by
farthest-point sampling on a random projection to 128 dimensions, starting from row 0 (deterministic). The rule:
``coreset`` (a fraction in (0, 1]) keeps that share of each bank; otherwise a bank over ``max_rows`` rows is cut to
``max_rows``; smaller banks stay exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: Similarities held at once in the tiled search (query rows x bank rows): 16 Mi, 64 MB in fp32.
DEFAULT_TILE_ELEMENTS = 1 << 24


@dataclass
class Bank:
    """Unit-norm patch features of known-good images for one (degree, layer), on the device in the compute dtype.

    Attributes:
        features: ``[M, C]`` rows.
        owner: ``[M]`` reference image index of each row.
        position: ``[M]`` grid position (row-major patch index) of each row.
    """

    features: Tensor
    owner: Tensor
    position: Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.features, self.owner, self.position))


@dataclass(frozen=True)
class Exclusion:
    """Bank rows a query may not match: those of the query's own image (``owner``) within ``radius`` patches
    (Chebyshev distance on a ``side x side`` grid) of its position; ``radius`` None = the whole image."""

    owner: Tensor  # [Q] image index of each query row
    position: Tensor  # [Q] grid position of each query row
    side: int
    radius: int | None = None

    def mask(self, bank: Bank, start: int, stop: int, rows: slice) -> Tensor:
        """``[q, stop - start]`` True where query rows ``rows`` may not match bank rows ``start:stop``."""
        same = self.owner[rows, None] == bank.owner[None, start:stop]
        if self.radius is None:
            return same
        qp, bp = self.position[rows, None], bank.position[None, start:stop]
        near = ((qp // self.side - bp // self.side).abs() <= self.radius) & \
               ((qp % self.side - bp % self.side).abs() <= self.radius)
        return same & near


def nearest_distance(queries: Tensor, bank: Bank, *, exclude: Exclusion | None = None,
                     tile_elements: int = DEFAULT_TILE_ELEMENTS) -> Tensor:
    """``[Q]`` fp32 Euclidean distance from each unit query row to its nearest allowed bank row (``inf`` when all
    are excluded). Bank tiles of at most ``tile_elements`` similarities; ``queries`` are cast to the bank's dtype
    for the search and the winner re-scored in fp32."""
    feats = bank.features
    q_all = queries.to(feats.device)
    q_search = q_all.to(feats.dtype)
    m = feats.shape[0]
    b_tile = max(1, min(m, tile_elements // 256))
    q_tile = max(1, tile_elements // b_tile)
    best = torch.empty(q_all.shape[0], dtype=torch.long, device=feats.device)
    found = torch.zeros(q_all.shape[0], dtype=torch.bool, device=feats.device)
    for q0 in range(0, q_all.shape[0], q_tile):
        rows = slice(q0, min(q0 + q_tile, q_all.shape[0]))
        top = torch.full((rows.stop - rows.start,), -math.inf, device=feats.device)
        arg = torch.zeros(rows.stop - rows.start, dtype=torch.long, device=feats.device)
        for b0 in range(0, m, b_tile):
            b1 = min(b0 + b_tile, m)
            sims = (q_search[rows] @ feats[b0:b1].T).float()
            if exclude is not None:
                sims.masked_fill_(exclude.mask(bank, b0, b1, rows), -math.inf)
            value, index = sims.max(dim=1)
            better = value > top
            top = torch.where(better, value, top)
            arg = torch.where(better, index + b0, arg)
        best[rows] = arg
        found[rows] = torch.isfinite(top)
    diff = q_all.float() - feats[best].float()
    dist = diff.norm(dim=1)
    return torch.where(found, dist, torch.full_like(dist, math.inf))


def greedy_coreset(features: Tensor, keep: int, *, dims: int = 128, seed: int = 0) -> Tensor:
    """Indices of ``keep`` rows chosen by farthest-point sampling (PatchCore's greedy coreset) on a seeded random
    projection to ``dims`` dimensions, starting from row 0. Costs ``keep x M x dims``."""
    m = features.shape[0]
    if keep >= m:
        return torch.arange(m, device=features.device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    proj = torch.randn(features.shape[1], dims, generator=gen).to(features.device) / math.sqrt(dims)
    z = features.float() @ proj
    chosen = torch.empty(keep, dtype=torch.long, device=features.device)
    chosen[0] = 0
    dist = (z - z[0]).pow(2).sum(1)
    for i in range(1, keep):
        nxt = int(dist.argmax())
        chosen[i] = nxt
        dist = torch.minimum(dist, (z - z[nxt]).pow(2).sum(1))
    return chosen


def build_bank(features: Tensor, *, dtype: torch.dtype, keep: int | None = None, seed: int = 0) -> Bank:
    """A bank from ``[K, L, C]`` unit features of K reference images; ``keep`` rows by greedy coreset (None: all)."""
    k, length, c = features.shape
    flat = features.reshape(k * length, c)
    owner = torch.arange(k, device=features.device, dtype=torch.int32).repeat_interleave(length)
    position = torch.arange(length, device=features.device, dtype=torch.int32).repeat(k)
    if keep is not None and keep < flat.shape[0]:
        index = greedy_coreset(flat, keep, seed=seed)
        flat, owner, position = flat[index], owner[index], position[index]
    return Bank(features=flat.to(dtype).contiguous(), owner=owner, position=position)
