"""Frozen linear layers on CPU through oneDNN instead of ``F.linear``'s BLAS call, for inference.

Why: PyTorch's x86 wheels send ``F.linear`` (``aten::addmm``) to MKL's sgemm, and on the AMD EPYC machines zsad is
measured on MKL takes its slow generic path: a ViT-L product ``[584, 1024] x [1024, 4096]`` at 2 threads takes
68 ms through ``addmm`` and 29 ms through oneDNN (``torch.ops.mkldnn._linear_pointwise``, the op inductor itself
emits for CPU linears), the same fp32 arithmetic up to summation order. ONNX Runtime's own GEMMs (MLAS) are fast there
too, which is why the exported model was 1.35x the official PyTorch loop while zsad's PyTorch path was 1.0x.

:func:`use_onednn` switches the ``nn.Linear`` modules of a frozen model to :class:`OneDnnLinear` in place (same
parameters, same state-dict keys, still an ``nn.Linear``); each call takes the oneDNN path only when it can (CPU,
fp32, nothing needs gradients, not being traced, exported or compiled) and is ``F.linear`` otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def onednn_available() -> bool:
    """This PyTorch has oneDNN and its fused linear op."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _plain_call() -> bool:
    """Being traced, exported or compiled: those need the standard op."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
                or exporting())


class OneDnnLinear(nn.Linear):
    """An ``nn.Linear`` whose inference calls on CPU in fp32 run oneDNN's linear (module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32
                or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)) or _plain_call()):
            return F.linear(x, weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "none", [], "")


def use_onednn(module: nn.Module) -> int:
    """Switch every plain ``nn.Linear`` under ``module`` to :class:`OneDnnLinear` in place; how many were switched
    (0 when this PyTorch has no oneDNN). Only for models that are not shared with code expecting ``F.linear``'s
    exact rounding (the two differ by summation order, ~1e-7 relative in fp32)."""
    if not onednn_available():
        return 0
    count = 0
    for child in module.modules():
        if type(child) is nn.Linear:
            child.__class__ = OneDnnLinear
            count += 1
    return count
