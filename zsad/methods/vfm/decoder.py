"""AnomalyVFM's mask decoder and image head, and how its mask logits become a map.

Decoder (MaticFuc/AnomalyVFM ``decoder.py``, built as ``SimpleDecoder(feat_dim, 1, 1)`` by ``train.py``, ``test.py``
and the Hub class): a bottleneck of two (3x3 conv, GroupNorm(32), ReLU) at the feature width, then one block of a
x2 nearest upsample and two (3x3 conv to half the width, GroupNorm(32), ReLU), then two 1x1 convs: ``final`` (the
mask logits) and ``final_conf`` (a per-pixel confidence used by the training loss only). Head
(``SimplePredictor``): one linear layer from the backbone's summary to one logit.

Map (``test.py``, the code behind the published numbers): ``sigmoid`` of the mask logits, then a 5x5 mean filter
(``nn.AvgPool2d(5, 1, 2)``: stride 1, zero padding counted), at twice the patch grid (96 x 96 at 768 px); zsad then
resizes it bilinearly to the image's size, as anomalib's port does. ``predict_single_image.py`` filters the logits
before the sigmoid instead: ``order="pool-sigmoid"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zsad.errors import UsageError

ORDERS = ("sigmoid-pool", "pool-sigmoid")


def _conv_norm(in_dim: int, out_dim: int) -> tuple[nn.Conv2d, nn.GroupNorm]:
    return nn.Conv2d(in_dim, out_dim, 3, 1, 1), nn.GroupNorm(32, out_dim)


class Bottleneck(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_norm(width, width)
        self.conv2, self.bn2 = _conv_norm(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class UpBlock(nn.Module):
    """x2 nearest upsample (``nn.Upsample(scale_factor=2)``), then two conv / GroupNorm / ReLU to ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_norm(in_dim, out_dim)
        self.conv2, self.bn2 = _conv_norm(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class VfmDecoder(nn.Module):
    """Patch features ``[B, C, g, g]`` -> (mask logits, confidence logits), each ``[B, 1, 2^k g, 2^k g]``."""

    def __init__(self, width: int, upsample_blocks: int = 1) -> None:
        super().__init__()
        if width % 32 or (width >> upsample_blocks) % 32:
            raise UsageError(f"the AnomalyVFM decoder needs a feature width whose halvings stay multiples of 32 "
                             f"(GroupNorm(32)); got {width}")
        self.bot = Bottleneck(width)
        dims = [width >> i for i in range(upsample_blocks + 1)]
        self.blocks = nn.ModuleList(UpBlock(a, b) for a, b in zip(dims, dims[1:]))
        self.final = nn.Conv2d(dims[-1], 1, 1)
        self.final_conf = nn.Conv2d(dims[-1], 1, 1)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bot(x)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.trunk(x)
        return self.final(x), self.final_conf(x)

    def mask_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Only the mask logits (inference skips ``final_conf``)."""
        return self.final(self.trunk(x))


def logits_to_map(logits: torch.Tensor, kernel: int = 5, order: str = "sigmoid-pool") -> torch.Tensor:
    """``[B, 1, H, W]`` mask logits -> ``[B, H, W]`` probabilities: sigmoid and a ``kernel`` x ``kernel`` mean filter
    (stride 1, zero padding counted, as ``nn.AvgPool2d(k, 1, k // 2)``), in ``order``; ``kernel`` 1 or 0: no filter."""
    if order not in ORDERS:
        raise UsageError(f"unknown map order '{order}' (use {' or '.join(ORDERS)})")
    if kernel > 1 and kernel % 2 == 0:
        raise UsageError(f"the map's mean filter needs an odd size, got {kernel}")

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel, 1, kernel // 2) if kernel > 1 else x

    x = logits.float()
    x = pool(x.sigmoid()) if order == "sigmoid-pool" else pool(x).sigmoid()
    return x[:, 0]
