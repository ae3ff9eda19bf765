"""An export's ONNX graph on OpenVINO, behind the small part of ONNX Runtime's session interface that
:class:`~zsad.backbones.onnx.OnnxBackbone` uses (``run``, ``get_outputs``), so the backbone, the methods, the
runner and the decisions are the very same code whichever engine runs the graph.

OpenVINO reads the ``.onnx`` files directly (its ONNX frontend); the int8 graph it runs is the static QDQ one
(``zsad export --int8 static``), whose QuantizeLinear / DequantizeLinear pairs its CPU plugin executes as int8
matrix products. fp32 stays fp32 (``INFERENCE_PRECISION_HINT f32``: on CPUs with AMX or AVX512-BF16 OpenVINO
would otherwise run bf16). Needs the ``openvino`` extra (``pip install "zsad[openvino]"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zsad.errors import UsageError

MISSING_OPENVINO = ("OpenVINO is not installed: install the optional extra with `pip install \"zsad[openvino]\"` "
                    "(from a checkout: pip install -e \".[openvino]\")")


def require_openvino():
    """``openvino``, or one clear :class:`UsageError` saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise UsageError(MISSING_OPENVINO) from None
    return openvino


@dataclass(frozen=True)
class _Output:
    name: str
    shape: list  # ints, or a string for a dynamic dimension (as ONNX Runtime reports it)


class OpenVinoSession:
    """A compiled OpenVINO model answering ``run(None, {"images": array})`` like an ONNX Runtime session."""

    def __init__(self, compiled, input_name: str) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._input = input_name
        self._outputs = [_Output(o.get_any_name(), [d.get_length() if d.is_static else "batch"
                                                    for d in o.get_partial_shape()]) for o in compiled.outputs]

    def get_outputs(self) -> list[_Output]:
        return list(self._outputs)

    def run(self, names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self._request.infer({self._input: np.ascontiguousarray(feeds[self._input])})
        return [np.array(results[o], copy=True) for o in self._compiled.outputs]


def make_openvino_session(path: str | Path, *, threads: int | None = None, device: str = "cpu") -> OpenVinoSession:
    """The graph at ``path`` compiled for OpenVINO's CPU plugin, fp32 kept, latency-oriented (one stream)."""
    ov = require_openvino()
    if not str(device).startswith("cpu"):
        raise UsageError(f"the openvino runtimes run on the CPU here, not on device '{device}' (use --device cpu)")
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    model = core.read_model(str(path))
    compiled = core.compile_model(model, "CPU", config)
    return OpenVinoSession(compiled, model.inputs[0].get_any_name())
