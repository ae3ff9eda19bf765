"""The exported graph: the backbone's token extraction exactly as the method calls it (its blocks, plain or V-V,
dynamic batch), written with ``torch.onnx.export`` (the dynamo exporter: the TorchScript one cannot export the
attention fast path), then weights folded so ONNX Runtime's quantiser sees every weight as a constant."""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zsad.backbones.base import Backbone
from zsad.backbones.export_folder import TokenCall

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
INPUT = "images"


class TokenGraph(nn.Module):
    """``images -> (the method's token outputs..., pooled, cls_raw)`` in the order of :meth:`output_names`."""

    def __init__(self, backbone: Backbone, call: TokenCall) -> None:
        super().__init__()
        self.backbone = backbone
        self.call = call

    def output_names(self) -> list[str]:
        return [*self.call.outputs, "pooled", "cls_raw"]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.backbone.tokens(images, list(self.call.layers), vv=self.call.vv, vv_start=self.call.vv_start)
        kept = [(out.layers if name.startswith("layers.") else out.plain)[int(name.split(".")[1])]
                for name in self.call.outputs]
        return (*kept, out.pooled, out.cls_raw)


def weights_sha256(model: nn.Module) -> str:
    """A hash of every parameter and buffer (names and bytes): which weights an export was made from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_tokens(backbone: Backbone, call: TokenCall, path: Path, *, opset: int = DEFAULT_OPSET) -> None:
    """Write the graph of ``call`` to ``path`` (fp32, batch size dynamic, weights folded)."""
    graph = TokenGraph(backbone, call).eval()
    export_module(graph, graph.output_names(), backbone.image_size, path, opset=opset)


def export_module(module: nn.Module, output_names: list[str], image_size: int, path: Path, *,
                  opset: int = DEFAULT_OPSET) -> None:
    """Write ``module(images)`` (preprocessed ``[B, 3, S, S]`` images -> ``output_names``) to ``path``: fp32, batch
    size dynamic, weights folded. The token graph above, or a whole method (``Method.graph_outputs``)."""
    import onnx

    example = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), (example,), None, input_names=[INPUT], output_names=output_names,
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), opset_version=opset,
                                    dynamo=True, verbose=False)
    model = program.model_proto
    fold_weights(model)
    onnx.save(model, str(path))


_FOLDABLE = ("Transpose", "Slice", "Reshape", "Squeeze", "Unsqueeze")


def fold_weights(model) -> int:
    """Replace ``Transpose`` / ``Slice`` / ``Reshape`` nodes whose inputs are all constants by their result (the
    attention projections reach their MatMul through such nodes); returns how many were folded."""
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    outputs = {o.name for o in graph.output}
    folded = 0
    while True:
        consts = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.output[0] not in consts and node.attribute[0].name == "value":
                tensor = onnx.TensorProto()
                tensor.CopyFrom(node.attribute[0].t)
                tensor.name = node.output[0]
                consts[node.output[0]] = tensor
        node = next((n for n in graph.node if n.op_type in _FOLDABLE and n.output[0] not in outputs and n.input
                     and all(name in consts for name in n.input if name)), None)
        if node is None:
            break
        value = ReferenceEvaluator(_single_node_model(model, node, consts)).run(None, {})[0]
        source = next(name for name in node.input if name in consts)
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), f"{source}.{node.op_type}.{folded}")
        graph.initializer.append(tensor)
        for other in graph.node:
            for i, name in enumerate(other.input):
                if name == node.output[0]:
                    other.input[i] = tensor.name
        graph.node.remove(node)
        folded += 1
    _drop_unused_initializers(model)
    return folded


def _single_node_model(model, node, consts):
    from onnx import helper

    inputs = [consts[name] for name in dict.fromkeys(n for n in node.input if n)]
    out = helper.make_tensor_value_info(node.output[0], 0, None)
    graph = helper.make_graph([node], "fold", [], [out], initializer=inputs)
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _drop_unused_initializers(model) -> None:
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
