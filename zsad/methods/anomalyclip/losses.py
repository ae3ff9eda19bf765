"""AnomalyCLIP's training objective (zqhang/AnomalyCLIP ``loss.py`` and ``train.py``).

``L = CE(global logits, label) + lambda * sum_taps [Focal(P, gt) + Dice(P_a, gt) + Dice(P_n, 1 - gt)]``
with focal gamma 2, alpha 1, label clamp 1e-5 (the official FocalLoss, after Hsuxu/Loss_ToolBox), Dice smooth 1
averaged over images. ``lambda`` is 4 with the single tap of the released checkpoints (the pre-2025 code summed
four aliased copies of layer 24) and 1 with the paper's four distinct taps (the paper's equation has no weight).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossParts:
    total: torch.Tensor
    global_: torch.Tensor
    local: torch.Tensor


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """``probs`` ``[B, C, H, W]`` (already softmaxed), ``target`` ``[B, H, W]`` class indices; mean over pixels."""
    classes = probs.shape[1]
    flat = probs.permute(0, 2, 3, 1).reshape(-1, classes)
    one_hot = F.one_hot(target.reshape(-1).long(), classes).to(flat.dtype)
    one_hot = one_hot.clamp(smooth / (classes - 1), 1.0 - smooth)
    pt = (one_hot * flat).sum(1) + smooth
    return (-torch.pow(1 - pt, gamma) * pt.log()).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean_i dice_i`` over the batch; ``pred`` and ``target`` ``[B, H, W]``."""
    pred, target = pred.flatten(1), target.flatten(1).to(pred.dtype)
    dice = (2 * (pred * target).sum(1) + smooth) / (pred.sum(1) + target.sum(1) + smooth)
    return 1 - dice.mean()


def anomalyclip_loss(global_logits: torch.Tensor, labels: torch.Tensor, maps: Sequence[torch.Tensor],
                     masks: torch.Tensor, local_weight: float) -> LossParts:
    """``global_logits`` ``[B, 2]``; ``maps`` one ``[B, 2, S, S]`` per tap; ``masks`` ``[B, S, S]`` in {0, 1}."""
    global_ = F.cross_entropy(global_logits, labels.long())
    local = global_logits.new_zeros(())
    for probs in maps:
        local = local + focal_loss(probs, masks) + dice_loss(probs[:, 1], masks) + dice_loss(probs[:, 0], 1 - masks)
    local = local_weight * local
    return LossParts(total=global_ + local, global_=global_, local=local)
