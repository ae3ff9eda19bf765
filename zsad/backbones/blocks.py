"""Which transformer blocks to tap: one rule for every backbone family (CLIP, timm, ONNX exports)."""

from __future__ import annotations

from collections.abc import Sequence

from zsad.errors import UsageError


def even_blocks(depth: int, count: int = 4) -> list[int]:
    """An even spread of ``count`` 0-based blocks ending at the last: [5, 11, 17, 23] for 24 blocks (MuSc's
    setting), [2, 5, 8, 11] for 12."""
    return sorted({max(0, round((i + 1) * depth / count) - 1) for i in range(count)})


def check_blocks(layers: Sequence[int], depth: int) -> list[int]:
    """0-based block indices (negative ones count from the end); a block the model lacks is a UsageError."""
    out = []
    for layer in layers:
        index = layer + depth if layer < 0 else layer
        if not 0 <= index < depth:
            raise UsageError(f"layer {layer} is out of range for a {depth}-block backbone (0-based)")
        out.append(index)
    return out
