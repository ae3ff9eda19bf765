"""oneDNN linear layers (zsad/backbones/cpu_linear.py): the same products as F.linear up to summation order, and the
standard op wherever oneDNN's cannot run (gradients, tracing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zsad.backbones.cpu_linear import OneDnnLinear, onednn_available, use_onednn

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 32, bias=False), nn.LayerNorm(32))


def test_switched_layers_give_the_same_products():
    plain, fast = _model(), _model()
    assert use_onednn(fast) == 2 and all(type(m) is OneDnnLinear for m in (fast[0], fast[2]))
    assert isinstance(fast[0], nn.Linear) and fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(3, 17, 48)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
        assert not torch.equal(fast(x), fast(x + 1e-3))  # it computes, not a constant


def test_the_standard_op_runs_where_onednn_cannot(monkeypatch):
    fast = _model()
    use_onednn(fast)
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 48, requires_grad=True)
    fast(x).sum().backward()  # gradients: F.linear
    assert x.grad is not None and not calls
    with torch.no_grad():
        fast(x)
        assert calls  # no gradients: oneDNN
        calls.clear()
        torch.jit.trace(fast, torch.randn(2, 48), check_trace=False)
    assert not calls  # tracing: F.linear
