"""A frozen open_clip ViT exposing what anomaly methods need: patch tokens of chosen layers, plain or
through the value-value (V-V) attention path, the projection into the joint space, and the text tower.

The V-V path follows CLIP Surgery (Li et al., 2023, arXiv 2304.05653) as used by AnomalyCLIP's DPAM
(zqhang/AnomalyCLIP, ``AnomalyCLIP_lib/AnomalyCLIP.py``): from block ``vv_start`` on, a second stream
``S`` starts as the block input and accumulates ``out_proj(softmax(V V^T / sqrt(d)) V)`` computed from
``ln_1`` of the *original* stream, with no FFN:  ``S_l = S_{l-1} + Proj_l(VV_l(LN1_l(x_{l-1})))``.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zsad.backbones.activation import model_activation, set_activation
from zsad.backbones.base import Backbone, TokenOutput
from zsad.backbones.names import BackboneSpec
from zsad.errors import UsageError


def interpolate_pos_embed(pos: torch.Tensor, new_grid: int, mode: str = "bicubic") -> torch.Tensor:
    """Resize ``[1 + g*g, C]`` position embeddings to ``[1 + n*n, C]`` keeping the class position.

    MuSc resizes bicubically, AnomalyCLIP bilinearly (both ``align_corners=False``); the mode is a choice.
    """
    cls_pos, grid_pos = pos[:1], pos[1:]
    old = int(math.isqrt(grid_pos.shape[0]))
    if old * old != grid_pos.shape[0]:
        raise ValueError(f"position embedding of {grid_pos.shape[0]} patches is not a square grid")
    if old == new_grid:
        return pos.clone()
    grid = grid_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(pos.dtype)
    return torch.cat([cls_pos, grid], dim=0)


def vv_attention(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Value-value self-attention of one residual block on ``x`` (already ``ln_1``-normalised), through
    the block's ``out_proj``: queries and keys are both the value projection. ``[B, N, C] -> [B, N, C]``."""
    attn: nn.MultiheadAttention = block.attn
    width = x.shape[-1]
    heads = attn.num_heads
    weight_v = attn.in_proj_weight[2 * width:]
    bias_v = attn.in_proj_bias[2 * width:] if attn.in_proj_bias is not None else None
    v = F.linear(x, weight_v, bias_v)
    batch, tokens, _ = v.shape
    v = v.reshape(batch, tokens, heads, width // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(v, v, v)
    out = out.transpose(1, 2).reshape(batch, tokens, width)
    return attn.out_proj(out)


def project_tokens(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's ``ln_post`` and ``proj`` (of ``model.visual``) applied to every token: ``[B, N, C] -> [B, N, D]``."""
    out = visual.ln_post(tokens)
    return out @ visual.proj if visual.proj is not None else out


class ClipBackbone(Backbone):
    """Frozen CLIP with intermediate tokens; images are squash-resized to ``image_size`` (no crop), so masks
    resized the same way stay aligned with their images. ``activation`` (``gelu`` / ``quick_gelu``) replaces the
    MLP activation of every block; None keeps the model's own. ``self.activation`` is what the model runs with."""

    has_text = True

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        spec: BackboneSpec,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        pos_interpolation: str = "bicubic",
        activation: str | None = None,
    ) -> None:
        super().__init__()
        visual = getattr(model, "visual", None)
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is None or not all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in blocks):
            raise UsageError(f"backbone '{spec.name}' is not an open_clip ViT with standard attention blocks")
        if getattr(visual, "attn_pool", None) is not None:
            raise UsageError(f"backbone '{spec.name}' uses attention pooling, which zsad does not support")
        if activation is not None:
            set_activation(model, activation)
        patch_size = int(visual.patch_size[0])
        if image_size % patch_size:
            raise UsageError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        self._set_facts(spec, image_size=image_size, patch_size=patch_size, mean=mean, std=std,
                        pos_interpolation=pos_interpolation, activation=model_activation(model))
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        if visual.positional_embedding.shape[0] != 1 + self.grid_size ** 2:
            with torch.no_grad():
                new_pos = interpolate_pos_embed(visual.positional_embedding.data, self.grid_size, pos_interpolation)
            visual.positional_embedding = nn.Parameter(new_pos, requires_grad=False)
        visual.image_size = (image_size, image_size)
        visual.grid_size = (self.grid_size, self.grid_size)

    def with_activation(self, activation: str) -> ClipBackbone:
        """This backbone with another MLP activation, sharing every weight (only the parameter-free modules are
        new), so detectors whose methods need different activations can share one loaded model; ``self`` when
        the activation already matches."""
        if activation == self.activation:
            return self
        shared = {id(t): t for t in itertools.chain(self.model.parameters(), self.model.buffers())}
        model = copy.deepcopy(self.model, memo=shared)
        view = ClipBackbone(model, self.tokenizer, self.spec, self.image_size, self.mean.view(-1).tolist(),
                            self.std.view(-1).tolist(), self.pos_interpolation, activation)
        return view.to(self.device)

    # -- facts -------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.model.visual.transformer.resblocks)

    @property
    def width(self) -> int:
        return int(self.model.visual.transformer.width)

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def device(self) -> torch.device:
        return self.model.visual.conv1.weight.device

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        return visual.ln_pre(x)

    def tokens(
        self, images: torch.Tensor, layers: Sequence[int], *, vv: bool = False, vv_start: int | None = None
    ) -> TokenOutput:
        """Residual-stream tokens of the given 0-based blocks (negative indices count from the end).

        With ``vv=True`` the blocks from ``vv_start`` on (default: the last 19 of 24, scaled to the depth,
        as AnomalyCLIP's DPAM) also feed the V-V stream, and tapped blocks at or after ``vv_start`` return
        V-V tokens. The original stream is never altered, so ``pooled`` is the same either way.
        """
        wanted = self.check_layers(layers)
        if vv_start is None:
            vv_start = self.num_layers - round(self.num_layers * 19 / 24)
        images = images.to(self.device)
        x = self._embed(images)
        surgery: torch.Tensor | None = None
        taps: dict[int, torch.Tensor] = {}
        plain: dict[int, torch.Tensor] = {}
        blocks = self.model.visual.transformer.resblocks
        for index, block in enumerate(blocks):
            if vv and index >= vv_start:
                vv_out = block.ls_1(vv_attention(block, block.ln_1(x)))
                surgery = (x if surgery is None else surgery) + vv_out
            x = block(x)
            if index in wanted:
                taps[index] = surgery if (vv and surgery is not None) else x
                plain[index] = x
        visual = self.model.visual
        cls_raw = x[:, 0]
        pooled = visual.ln_post(cls_raw)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return TokenOutput(layers={i: taps[i] for i in wanted}, pooled=pooled, cls_raw=cls_raw,
                           plain={i: plain[i] for i in wanted})

    def project_patches(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post`` and ``proj`` applied to every token: ``[B, N, C] -> [B, N, D]`` in the text space."""
        return project_tokens(self.model.visual, tokens)

    # -- text --------------------------------------------------------------------------------------
    def encode_text(self, sentences: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Unnormalised text embeddings ``[n, D]`` of the sentences."""
        chunks = []
        for start in range(0, len(sentences), batch_size):
            ids = self.tokenizer(list(sentences[start:start + batch_size])).to(self.device)
            chunks.append(self.model.encode_text(ids).float())
        return torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim, device=self.device)
