"""The one type every backbone implements: what a method may ask of a frozen vision transformer.

CLIP (:mod:`.clip`), vision-only timm models (:mod:`.timm`) and exported graphs on ONNX Runtime (:mod:`.onnx`) are
all a :class:`Backbone`: facts (depth, width, patch size, input size, activation), preprocessing, and
``tokens(images, layers)`` for any 0-based blocks. Backbones with a text tower (``has_text``) also project patch
tokens into the joint space and embed sentences; the others refuse with one message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from zsad.backbones.blocks import check_blocks, even_blocks
from zsad.backbones.names import BackboneSpec
from zsad.errors import UsageError


@dataclass
class TokenOutput:
    """Tokens of one forward pass.

    Attributes:
        layers: 0-based block index -> ``[B, 1 + L, C]`` residual-stream tokens (class token first) after
            that block; from the V-V stream for blocks ``>= vv_start`` when the V-V path was asked for.
        pooled: ``[B, D]`` the image embedding (CLIP: ``ln_post`` on the class token, then ``proj``; timm: the
            final normed class token).
        cls_raw: ``[B, C]`` the final class token before ``ln_post`` (AnomalyCLIP's global feature).
        plain: the same blocks from the original stream (equal to ``layers`` when no V-V path was asked
            for), so one pass serves methods that need both.
    """

    layers: dict[int, torch.Tensor]
    pooled: torch.Tensor
    cls_raw: torch.Tensor
    plain: dict[int, torch.Tensor]


class Backbone(nn.Module):
    """Base of every backbone. Subclasses set the facts in ``__init__`` (:meth:`_set_facts`) and implement
    ``num_layers``, ``width``, ``embed_dim``, ``device`` and :meth:`tokens`."""

    #: a text tower: ``encode_text`` and ``project_patches`` work (methods with ``needs_text`` require it)
    has_text: ClassVar[bool] = False
    #: RsCIN's image feature is L2-normalised (CLIP's embedding) or taken as it is (DINOv2's normed class token)
    normalize_pooled: ClassVar[bool] = True
    #: the squash-resize filter of :meth:`preprocess` (CLIP: bicubic; MuSc's non-CLIP path: bilinear)
    resize_filter: ClassVar[int] = Image.BICUBIC

    spec: BackboneSpec
    image_size: int
    patch_size: int
    grid_size: int
    activation: str | None
    pos_interpolation: str
    #: what an export folder holds beside the graph (:class:`~zsad.backbones.onnx.ExportFolder`); None otherwise
    export: Any = None

    def _set_facts(self, spec: BackboneSpec, *, image_size: int, patch_size: int, mean: Sequence[float],
                   std: Sequence[float], pos_interpolation: str, activation: str | None) -> None:
        self.spec = spec
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.pos_interpolation = pos_interpolation
        self.activation = activation
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)

    # -- facts -------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        raise NotImplementedError

    @property
    def width(self) -> int:
        raise NotImplementedError

    @property
    def embed_dim(self) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    @property
    def random_weights(self) -> bool:
        return self.spec.random_weights

    def default_layers(self, count: int = 4) -> list[int]:
        """An even spread of ``count`` 0-based blocks ending at the last: [5, 11, 17, 23] for 24 blocks."""
        return even_blocks(self.num_layers, count)

    def check_layers(self, layers: Sequence[int]) -> list[int]:
        """0-based block indices (negative ones count from the end); a block the model lacks is a UsageError."""
        return check_blocks(layers, self.num_layers)

    def with_activation(self, activation: str) -> Backbone:
        """This backbone running ``activation`` in its MLPs; backbones that cannot change it accept only their own."""
        if activation in ("auto", self.activation):
            return self
        raise UsageError(f"--activation {activation} applies to CLIP backbones; '{self.spec.name}' runs its own "
                         f"({self.activation})")

    # -- images ------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Squash-resize RGB images to ``image_size`` (no crop, so masks resized the same way stay aligned) and
        normalise: ``[B, 3, S, S]`` on CPU."""
        size = (self.image_size, self.image_size)
        arrays = [np.asarray(img.convert("RGB").resize(size, self.resize_filter), dtype=np.float32) for img in images]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        return (batch - self.mean.cpu()) / self.std.cpu()

    def tokens(self, images: torch.Tensor, layers: Sequence[int], *, vv: bool = False,
               vv_start: int | None = None) -> TokenOutput:
        """Tokens of the given 0-based blocks (see :class:`TokenOutput`); ``vv`` asks for the value-value path."""
        raise NotImplementedError

    # -- text --------------------------------------------------------------------------------------
    def project_patches(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, N, C]`` projected into the text space ``[B, N, D]`` (backbones with a text tower)."""
        raise UsageError(f"backbone '{self.spec.name}' is vision-only: it has no joint image-text space")

    def encode_text(self, sentences: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Unnormalised text embeddings ``[n, D]`` (backbones with a text tower)."""
        raise UsageError(f"backbone '{self.spec.name}' is vision-only: it has no text tower")
