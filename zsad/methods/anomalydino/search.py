"""Nearest reference patches by cosine distance: exact and tiled (the official search), or through an
inverted-file index (:mod:`.ivf`) for large banks.

AnomalyDINO (dammsi/AnomalyDINO ``src/detection.py``) L2-normalises the reference patches, adds them to a faiss
``IndexFlatL2`` and divides the squared distance of each L2-normalised test patch to its ``k`` nearest by 2 (the
mean over them for ``k > 1``): for unit vectors ``|q - b|^2 / 2 = 1 - cos(q, b)``. Here the same ``1 - cos`` comes
from tiled matrix products (``q @ bank.T`` over bank tiles of at most ``tile_elements`` similarities, a running top-k
kept), in fp32, clamped at 0 as faiss clamps its squared distances: exact, never an ``[L, M]`` matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from zsad.methods.anomalydino.ivf import DEFAULT_PROBE, IvfIndex, build_ivf, ivf_search

#: similarities held at once (query rows x bank rows): 16 Mi, 64 MB in fp32
DEFAULT_TILE_ELEMENTS = 1 << 24


@dataclass
class PatchBank:
    """Unit reference patch features ``[M, C]`` (fp32, on the device) and the reference each row came from."""

    features: Tensor
    owner: Tensor  # [M] int32: index of the reference image (all its rotations share it)
    ivf: IvfIndex | None = None  # set by :meth:`index` for ``search="ivf"``
    probe: int = DEFAULT_PROBE

    @classmethod
    def build(cls, features: list[Tensor], owners: list[int], device: torch.device,
              dtype: torch.dtype = torch.float32) -> PatchBank:
        """A bank of the given per-image tokens (rows normalised, stored in ``dtype``)."""
        bank = cls.empty(sum(len(f) for f in features), int(features[0].shape[1]), device, dtype)
        start = 0
        for f, o in zip(features, owners):
            bank.put(start, f, o)
            start += len(f)
        return bank

    @classmethod
    def empty(cls, rows: int, width: int, device: torch.device, dtype: torch.dtype = torch.float32) -> PatchBank:
        """A bank of ``rows`` rows to fill with :meth:`put` (fp16 halves it; every product is still fp32)."""
        return cls(features=torch.empty(rows, width, dtype=dtype, device=device),
                   owner=torch.empty(rows, dtype=torch.int32, device=device))

    def put(self, start: int, tokens: Tensor, owner: int) -> int:
        """Write one image's tokens, normalised, at row ``start``; returns the next free row."""
        stop = start + len(tokens)
        self.features[start:stop] = F.normalize(tokens.float(), dim=-1).to(self.features)
        self.owner[start:stop] = owner
        return stop

    def index(self, *, lists: int | None = None, probe: int = DEFAULT_PROBE, seed: int = 0) -> None:
        """Search through an inverted-file index from now on (approximate: see :mod:`.ivf`)."""
        self.ivf = build_ivf(self.features, lists=lists, seed=seed)
        self.probe = probe

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])

    @property
    def nbytes(self) -> int:
        extra = 0 if self.ivf is None else self.ivf.nbytes
        return self.features.numel() * self.features.element_size() + self.owner.numel() * 4 + extra


def nearest_cosine(queries: Tensor, bank: PatchBank, *, k: int = 1, exclude_owner: int | None = None,
                   tile_elements: int = DEFAULT_TILE_ELEMENTS) -> Tensor:
    """``[Q]`` fp32 mean ``1 - cos`` of each query row to its ``k`` nearest bank rows (rows of reference
    ``exclude_owner`` left out); ``queries`` need not be unit vectors. A bank with an index searches through it."""
    feats = bank.features
    q = F.normalize(queries.to(feats.device).float(), dim=-1)
    m = feats.shape[0]
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if bank.ivf is not None:
        return ivf_search(q, feats, bank.ivf, bank.owner, k=k, probe=bank.probe, exclude_owner=exclude_owner)
    b_tile = max(k, min(m, tile_elements // max(1, min(q.shape[0], 1024))))
    q_tile = max(1, tile_elements // b_tile)
    out = torch.empty(q.shape[0], dtype=torch.float32, device=feats.device)
    for q0 in range(0, q.shape[0], q_tile):
        rows = q[q0:q0 + q_tile]
        best = torch.full((rows.shape[0], k), -math.inf, device=feats.device)
        for b0 in range(0, m, b_tile):
            b1 = min(b0 + b_tile, m)
            sims = rows @ feats[b0:b1].float().T
            if exclude_owner is not None:
                sims.masked_fill_(bank.owner[b0:b1][None] == exclude_owner, -math.inf)
            if k == 1:
                best = torch.maximum(best, sims.max(dim=1, keepdim=True).values)
            else:
                best = torch.cat([best, sims], dim=1).topk(k, dim=1).values
        out[q0:q0 + q_tile] = (1.0 - best).clamp_min(0.0).mean(dim=1)
    return out
