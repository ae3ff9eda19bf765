"""A tiny DINOv2-style timm ViT with random weights, built from a config (no download), for tests and smoke runs.

Same family as DINOv2's release models in timm (``vit_*_patch14_dinov2``): patch 14, LayerScale, final LayerNorm,
class token, optionally register tokens laid out as timm's ``*_reg4_dinov2`` (no position embedding for the
prefix tokens). Its scores are meaningless; everything that loads it warns so.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

#: the size its position embeddings are made for (16 x 16 patches); other sizes are resampled by timm
TINY_DINO_NATIVE_SIZE = 224


def build_tiny_dino(img_size: int = TINY_DINO_NATIVE_SIZE, *, reg_tokens: int = 0, seed: int = 0) -> VisionTransformer:
    """A 6-block, width-64 DINOv2-style ViT/14 (LayerScale init 1.0, so random blocks change the tokens), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(
            img_size=img_size, patch_size=14, embed_dim=64, depth=6, num_heads=4, mlp_ratio=4.0,
            init_values=1.0, num_classes=0, reg_tokens=reg_tokens, no_embed_class=reg_tokens > 0,
        )
        with torch.no_grad():  # timm zero-inits some tensors; give every one a value so tests can see mistakes
            model.cls_token.normal_(std=0.5)
            if model.reg_token is not None:
                model.reg_token.normal_(std=0.5)
            model.pos_embed.normal_(std=0.5)
    return model.eval()
