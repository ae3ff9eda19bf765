"""Outlier handling before static int8: SmoothQuant's per-channel scaling, applied to the exported ONNX graph.

A transformer's activations carry a few input channels far larger than the rest (CLIP's residual stream has
them); one per-tensor int8 scale for such an activation spends its range on those channels and rounds the others
away, which is what made the quantised ``mlp.fc`` and ``attn.out`` lose the maps. SmoothQuant (Xiao et al.,
"SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models", ICML 2023, eq. 4)
moves that difficulty into the weights, whose per-output-channel int8 scales absorb it:

    Y = X W = (X diag(s)^-1) (diag(s) W),   s_j = max|X_j|^alpha / max|W_j.|^(1 - alpha)

with ``max|X_j|`` over calibration images. Here every weight MatMul of the graph gets a ``Mul`` by ``1/s`` on
its input (a constant per-channel vector: one elementwise pass, negligible beside the product) and its weight
rows scaled by ``s``; the fp32 graph computes the same function (up to rounding), the quantiser then sees
flattened activations. Written for zsad from the paper's equation; no code taken from its repository.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

DEFAULT_ALPHA = 0.5  # the paper's default migration strength


def activation_maxima(model, nodes: list[str], feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per input channel (last axis), the largest ``|x|`` reaching each MatMul in ``nodes`` over ``feeds``."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inputs = {n.name: n.input[0] for n in probe.graph.node if n.name in nodes}
    existing = {o.name for o in probe.graph.output}
    for tensor in dict.fromkeys(inputs.values()):
        if tensor not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=tensor))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the unused-initializer notices of a probe graph are noise
    session = ort.InferenceSession(probe.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    maxima: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = dict(zip(names, session.run(None, feed)))
        for tensor in dict.fromkeys(inputs.values()):
            value = np.abs(values[tensor]).reshape(-1, values[tensor].shape[-1]).max(axis=0)
            maxima[tensor] = value if tensor not in maxima else np.maximum(maxima[tensor], value)
    return {node: maxima[tensor] for node, tensor in inputs.items()}


def smooth(model, maxima: dict[str, np.ndarray], alpha: float = DEFAULT_ALPHA) -> int:
    """Rescale each MatMul in ``maxima`` in place as in the module doc; returns how many were smoothed."""
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    count = 0
    for node in list(graph.node):
        if node.name not in maxima or node.op_type != "MatMul" or node.input[1] not in consts:
            continue
        weight = numpy_helper.to_array(consts[node.input[1]]).astype(np.float32)
        act = maxima[node.name].astype(np.float64)
        if weight.ndim != 2 or act.shape[0] != weight.shape[0]:
            continue
        wmax = np.abs(weight).max(axis=1).astype(np.float64)
        scale = np.power(np.maximum(act, 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1.0 - alpha)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0).astype(np.float32)
        new_weight = numpy_helper.from_array(weight * scale[:, None], f"{node.input[1]}.smooth{count}")
        inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{node.name}.smooth_inv")
        graph.initializer.extend([new_weight, inverse])
        mid = f"{node.input[0]}.smooth{count}"
        mul = helper.make_node("Mul", [node.input[0], inverse.name], [mid], name=f"{node.name}.smooth")
        graph.node.insert(list(graph.node).index(node), mul)
        uses[node.input[1]] -= 1
        node.input[0], node.input[1] = mid, new_weight.name
        count += 1
    keep = [t for t in graph.initializer if uses.get(t.name, 1) > 0]  # weights no node reads any more
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return count
