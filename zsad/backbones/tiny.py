"""A tiny CLIP of the same architecture family as OpenAI's ViTs, with random weights.

It runs in well under a second per image on a CPU, so tests and smoke runs exercise every code path.
Its scores are meaningless; everything that loads it warns so.
"""

from __future__ import annotations

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

TINY_NATIVE_IMAGE_SIZE = 224


def build_tiny_clip(seed: int = 0) -> CLIP:
    """A 6-block ViT-S/14-like vision tower (width 64) and a 2-block text tower, seeded, QuickGELU."""
    vision = CLIPVisionCfg(layers=6, width=64, head_width=16, patch_size=14, image_size=TINY_NATIVE_IMAGE_SIZE)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=4, layers=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(embed_dim=64, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    return model.eval()
