"""DoRA adapters as AnomalyVFM places them, kept apart for training and folded into plain weights for inference.

Where (MaticFuc/AnomalyVFM ``peft_local/peft_func.py::_add_attn_peft``): every attention's fused ``qkv`` (only its
q and v row blocks get adapters; k stays) and its output ``proj``; nothing else (the patch embedding is skipped).
On an open_clip tower the same rows are the q / v blocks of ``in_proj_weight`` and ``out_proj`` (the official
CLIP path adapts ``q_proj``, ``v_proj``, ``out_proj``: the same rows, since DoRA normalises each row).

What (``peft_local/dora.py``), for a weight ``W`` ``[out, in]`` with rank ``r``, ``alpha`` and ``s = alpha / r``::

    W' = m * (W + s B A) / (||W + s B A||_row + 1e-8)        A [r, in], B [out, r], m [out]

initialised with ``A ~ 0.01 N(0, 1)``, ``B = 0`` and ``m = ||W||_row`` (so an untrained adapter is the identity up
to the 1e-8). The adapted weight does not depend on the input, so for inference it is computed once and the
forward is a plain ViT (:func:`fold`); training computes it every step from the frozen ``W`` (:func:`adapted`),
which is what the official wrappers do inside their ``forward``.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from zsad.backbones.base import Backbone
from zsad.errors import UsageError

#: AnomalyVFM's defaults (``train.py``: ``--peft-rank 64``; ``add_peft`` keeps ``alpha=1.0``)
DEFAULT_RANK = 64
DEFAULT_ALPHA = 1.0
EPS = 1e-8


def dora_weight(base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, magnitude: torch.Tensor,
                scaling: float) -> torch.Tensor:
    """``m * (W + s B A) / (||W + s B A||_row + 1e-8)`` (``peft_local/dora.py``)."""
    adapted = base + (lora_b @ lora_a) * scaling
    return magnitude.unsqueeze(1) * (adapted / (adapted.norm(dim=1, keepdim=True) + EPS))


class DoraLinear(nn.Module):
    """The adapter of one ``proj`` weight."""

    def __init__(self, out_dim: int, in_dim: int, rank: int) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.randn(rank, in_dim) * 0.01)
        self.lora_B = nn.Parameter(torch.zeros(out_dim, rank))
        self.magnitude = nn.Parameter(torch.ones(out_dim))

    def adapt(self, base: torch.Tensor, scaling: float) -> torch.Tensor:
        return dora_weight(base, self.lora_A, self.lora_B, self.magnitude, scaling)

    def reset_magnitude(self, base: torch.Tensor) -> None:
        with torch.no_grad():
            self.magnitude.copy_(base.norm(dim=1).to(self.magnitude.device))


class DoraQkv(nn.Module):
    """The adapters of one fused ``qkv`` weight ``[3C, C]``: its q and v row blocks (k is left as it is)."""

    def __init__(self, width: int, in_dim: int, rank: int) -> None:
        super().__init__()
        self.lora_A_q = nn.Parameter(torch.randn(rank, in_dim) * 0.01)
        self.lora_B_q = nn.Parameter(torch.zeros(width, rank))
        self.lora_A_v = nn.Parameter(torch.randn(rank, in_dim) * 0.01)
        self.lora_B_v = nn.Parameter(torch.zeros(width, rank))
        self.mag_q = nn.Parameter(torch.ones(width))
        self.mag_v = nn.Parameter(torch.ones(width))

    def adapt(self, base: torch.Tensor, scaling: float) -> torch.Tensor:
        q, k, v = base.chunk(3, dim=0)
        q = dora_weight(q, self.lora_A_q, self.lora_B_q, self.mag_q, scaling)
        v = dora_weight(v, self.lora_A_v, self.lora_B_v, self.mag_v, scaling)
        return torch.cat([q, k, v], dim=0)

    def reset_magnitude(self, base: torch.Tensor) -> None:
        q, _, v = base.chunk(3, dim=0)
        with torch.no_grad():
            self.mag_q.copy_(q.norm(dim=1).to(self.mag_q.device))
            self.mag_v.copy_(v.norm(dim=1).to(self.mag_v.device))


class DoraBlock(nn.Module):
    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.qkv = DoraQkv(width, width, rank)
        self.proj = DoraLinear(width, width, rank)


@dataclass(frozen=True)
class Target:
    """Where one block's adapted weights live in a backbone (qualified parameter names)."""

    qkv: str
    proj: str


def targets(backbone: Backbone) -> list[Target]:
    """The attention weights AnomalyVFM adapts, block by block: ``*.attn.qkv.weight`` / ``*.attn.proj.weight`` of
    RADIO and timm ViTs, ``in_proj_weight`` / ``out_proj.weight`` of an open_clip vision tower's attentions."""
    found = []
    for name, module in backbone.named_modules():
        qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
        if isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and name.endswith("attn"):
            found.append(Target(f"{name}.qkv.weight", f"{name}.proj.weight"))
        elif isinstance(module, nn.MultiheadAttention) and name.startswith("model.visual."):
            found.append(Target(f"{name}.in_proj_weight", f"{name}.out_proj.weight"))
    if not found:
        raise UsageError(f"backbone '{backbone.spec.name}' has no attention weights AnomalyVFM can adapt "
                         f"(fused qkv + proj, or an open_clip vision tower)")
    return found


class DoraSet(nn.Module):
    """One :class:`DoraBlock` per adapted attention of a backbone; ``scaling = alpha / rank``."""

    def __init__(self, blocks: int, width: int, rank: int = DEFAULT_RANK, alpha: float = DEFAULT_ALPHA) -> None:
        super().__init__()
        if rank < 1:
            raise UsageError(f"DoRA rank must be at least 1, got {rank}")
        self.rank = rank
        self.alpha = alpha
        self.blocks = nn.ModuleList(DoraBlock(width, rank) for _ in range(blocks))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def for_backbone(cls, backbone: Backbone, rank: int = DEFAULT_RANK, alpha: float = DEFAULT_ALPHA) -> DoraSet:
        """Freshly initialised adapters for ``backbone`` (the official init: ``B = 0``, magnitudes = row norms)."""
        found = targets(backbone)
        params = dict(backbone.named_parameters())
        dora = cls(len(found), params[found[0].proj].shape[0], rank, alpha)
        dora.reset_magnitudes(backbone)
        return dora

    def reset_magnitudes(self, backbone: Backbone) -> None:
        """Magnitudes = the row norms of ``backbone``'s frozen weights (DoRA's initialisation)."""
        params = dict(backbone.named_parameters())
        for block, target in zip(self.blocks, targets(backbone)):
            block.qkv.reset_magnitude(params[target.qkv].detach().float().cpu())
            block.proj.reset_magnitude(params[target.proj].detach().float().cpu())

    def adapted(self, backbone: Backbone) -> dict[str, torch.Tensor]:
        """Qualified parameter name -> adapted weight, for every target (differentiable w.r.t. the adapters)."""
        found = targets(backbone)
        if len(found) != len(self.blocks):
            raise UsageError(f"the adapter has {len(self.blocks)} blocks, backbone '{backbone.spec.name}' has "
                             f"{len(found)}")
        params = dict(backbone.named_parameters())
        out = {}
        for block, target in zip(self.blocks, found):
            out[target.qkv] = block.qkv.adapt(params[target.qkv], self.scaling)
            out[target.proj] = block.proj.adapt(params[target.proj], self.scaling)
        return out


def fold(backbone: Backbone, dora: DoraSet) -> Backbone:
    """A view of ``backbone`` whose adapted weights are computed once (fp32) and stored as plain weights; every
    other parameter and buffer is shared, and ``backbone`` itself is left as it is (it may be shared)."""
    params = dict(backbone.named_parameters())
    with torch.no_grad():
        adapted = {name: weight.detach().float().to(params[name].dtype) for name, weight in dora.adapted(backbone).items()}
    replace = {id(params[name]): nn.Parameter(weight, requires_grad=False) for name, weight in adapted.items()}
    memo = {id(t): t for t in itertools.chain(backbone.parameters(), backbone.buffers())}
    memo.update(replace)
    return copy.deepcopy(backbone, memo=memo)


class _Call(nn.Module):
    """``fn(backbone, *args)`` as a module, so :func:`torch.func.functional_call` can swap the backbone's weights."""

    def __init__(self, backbone: Backbone, fn: Callable) -> None:
        super().__init__()
        self.backbone = backbone
        self.fn = fn

    def forward(self, *args):
        return self.fn(self.backbone, *args)


def run_adapted(backbone: Backbone, dora: DoraSet, fn: Callable, *args):
    """``fn(backbone, *args)`` with the adapted weights in place of the frozen ones, computed now from the adapters
    (training: gradients reach the adapters; the backbone's own weights are untouched)."""
    weights = {f"backbone.{name}": weight for name, weight in dora.adapted(backbone).items()}
    return torch.func.functional_call(_Call(backbone, fn), weights, args, strict=False)


def named_tensors(dora: DoraSet) -> Iterator[tuple[str, torch.Tensor]]:
    """The adapter tensors as stored in an adapter folder: ``dora.blocks.{i}.qkv.lora_A_q`` ..."""
    for name, tensor in dora.state_dict().items():
        yield f"dora.{name}", tensor
