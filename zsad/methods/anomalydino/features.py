"""What both AnomalyDINO modes share: their own image preparation and the last block's normed patch tokens.

Images keep their aspect ratio (:mod:`.preprocess`), so a batch holds tensors of several sizes; each size goes
through the backbone as its own stack. Features are kept per image on the host: ``[L_i, C]`` tokens, the
``(h, w)`` patch grid, and the foreground mask when masking is on (:mod:`.masking`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from zsad.backbones.dinov2_hub import DINOV2_HUB
from zsad.device import autocast
from zsad.errors import UsageError
from zsad.methods.anomalydino.masking import foreground_mask
from zsad.methods.anomalydino.preprocess import prepare
from zsad.methods.base import Method

log = logging.getLogger(__name__)

#: the official backbone (``dinov2_vits14`` from the hub) as timm names it
DEFAULT_BACKBONE = "timm:vit_small_patch14_dinov2.lvd142m"


@dataclass
class DinoFeatures:
    """Per-image features of a chunk or a group, in order."""

    tokens: list[torch.Tensor]  # [L_i, C] fp32, final-normed patch tokens of the last block
    grids: list[tuple[int, int]]  # (h, w) patch grid of each image
    masks: list[np.ndarray | None]  # [L_i] bool foreground, None when masking is off

    def __len__(self) -> int:
        return len(self.tokens)


def concat_features(chunks: Sequence[DinoFeatures]) -> DinoFeatures:
    return DinoFeatures(tokens=[t for c in chunks for t in c.tokens], grids=[g for c in chunks for g in c.grids],
                        masks=[m for c in chunks for m in c.masks])


class DinoPatchMethod(Method):
    """Base of the AnomalyDINO modes: preprocessing and feature extraction (the scoring is the subclasses')."""

    needs_text = False
    pos_interpolation = DINOV2_HUB  # the native position table, resampled per input as the hub model does
    default_backbone = DEFAULT_BACKBONE

    def __init__(self, backbone, *, dtype: torch.dtype, masking: bool | None) -> None:
        super().__init__(backbone, dtype=dtype)
        if getattr(backbone, "pos_interpolation", None) != DINOV2_HUB:
            raise UsageError(f"method '{self.name}' runs DINOv2 as its hub model does: load the backbone with "
                             f"zsad.create or backbone_for (a timm DINOv2 model, e.g. {DEFAULT_BACKBONE})")
        self.masking = bool(masking)
        self.masking_given = masking is not None
        self.layer = backbone.num_layers - 1

    def dataset_defaults(self, dataset_format: str, category: str) -> None:
        """The official per-category masking for MVTec AD and VisA (``get_dataset_info``), unless set explicitly."""
        from zsad.methods.anomalydino.defaults import official_masking

        if not self.masking_given:
            self.masking = official_masking(dataset_format, category)

    def preprocess(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        bb = self.backbone
        return [prepare(img, bb.image_size, bb.patch_size, bb.mean.view(-1).tolist(), bb.std.view(-1).tolist())
                for img in images]

    @torch.inference_mode()
    def forward_tokens(self, images: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """``[L_i, C]`` tokens and ``(h, w)`` grid of each prepared image (stacked per size for the forward)."""
        images = list(images)
        tokens: list[torch.Tensor] = [torch.empty(0)] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            by_shape.setdefault(tuple(img.shape), []).append(i)
        for index in by_shape.values():
            stack = torch.stack([images[i] for i in index])
            with autocast(self.device, self.dtype):
                out = self.backbone.tokens(stack, [self.layer])
            patches = out.layers[self.layer][:, 1:].float().cpu()
            for row, i in enumerate(index):
                tokens[i] = patches[row]
        patch = self.backbone.patch_size
        return tokens, [(int(img.shape[-2]) // patch, int(img.shape[-1]) // patch) for img in images]

    def extract(self, images: Sequence[torch.Tensor]) -> DinoFeatures:
        """Tokens of each image, with its foreground mask when masking is on."""
        tokens, grids = self.forward_tokens(images)
        return DinoFeatures(tokens=tokens, grids=grids, masks=[self.mask(t, g) for t, g in zip(tokens, grids)])

    def mask(self, tokens: torch.Tensor, grid: tuple[int, int]) -> np.ndarray | None:
        """The foreground mask of one image's tokens when masking is on (None: every patch counts). A mask that
        keeps no patch (no first-component value beyond the threshold on either side) is dropped with a warning:
        the official code would score such an image 0 whatever it shows."""
        if not self.masking:
            return None
        mask = foreground_mask(tokens.numpy(), grid)
        if not mask.any():
            log.warning("%s: foreground masking kept no patch of a %d x %d grid; scoring every patch of it",
                        self.name, *grid)
            return None
        return mask

    combine = staticmethod(concat_features)
