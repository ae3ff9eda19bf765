"""int8 variant of an export, in one of two modes, leaving out the kinds of layers whose quantisation hurts the
maps, found by measurement:

- ``dynamic`` (``zsad export --int8``, the default): ONNX Runtime dynamic quantisation, int8 weights (per
  tensor) and activations quantised per call (MatMulInteger); runs on ONNX Runtime only.
- ``static`` (``--int8 static``): SmoothQuant per-channel scaling (:mod:`.smooth`) from calibration images, then
  ONNX Runtime's static QDQ quantisation: int8 weights per output channel, activation scales fixed from the
  same calibration images (MinMax); the attention products (Q K^T, scores x V) are quantised too, as their own
  role ``attn.matmul`` in the search. A QDQ graph runs as int8 on ONNX Runtime and on OpenVINO alike.

The search works on layer roles (patch embedding, attention qkv / output, MLP in / out, the V-V path's value and
output projections, the final projection): quantise all; if the maps do not reach the goal, measure each role
quantised alone, and keep the most harmful roles in fp32 one by one until the goal is met. Every trial is kept
for ``export.json``. The patch-embedding convolution stays fp32 (ONNX Runtime has no fast ConvInteger).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zsad.backbones.onnx import require_onnxruntime
from zsad.export.fidelity import INT8_GOAL, Int8Agreement

log = logging.getLogger(__name__)

ROLES = ("attn.qkv", "attn.out", "mlp.fc", "mlp.proj", "vv.value", "vv.out", "proj", "patch", "head", "other",
         "attn.matmul")
#: static QDQ also quantises the products of two activations (attention scores Q K^T and their mix with V)
_SCOPES = "pkg.torch.onnx.name_scopes"


def gemm_to_matmul(model) -> int:
    """Rewrite ``Gemm(A, W, b)`` with a constant ``W`` as ``MatMul(A, W') + b`` (dynamic quantisation covers
    MatMul, not Gemm); the node keeps its name and metadata. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    count = 0
    for node in list(graph.node):
        if node.op_type != "Gemm" or node.input[1] not in consts:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            continue
        weight = numpy_helper.to_array(consts[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T.copy()
        name = f"{node.input[1]}.T{count}"
        graph.initializer.append(numpy_helper.from_array(weight, name))
        mid = f"{node.output[0]}.matmul"
        matmul = helper.make_node("MatMul", [node.input[0], name], [mid if len(node.input) > 2 else node.output[0]],
                                  name=node.name)
        matmul.metadata_props.extend(node.metadata_props)
        new = [matmul]
        if len(node.input) > 2 and node.input[2]:
            new.append(helper.make_node("Add", [mid, node.input[2]], [node.output[0]], name=f"{node.name}.bias"))
        position = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, item in enumerate(new):
            graph.node.insert(position + offset, item)
        count += 1
    return count


def weight_roles(model, activations: bool = False) -> dict[str, str]:
    """Node name -> role, for every MatMul whose second input is a constant (the ones worth quantising); with
    ``activations``, the MatMuls of two activations too (role ``attn.matmul``: static QDQ quantises them)."""
    consts = {t.name: t for t in model.graph.initializer}
    roles = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and activations and node.input[1] not in consts:
            roles[node.name] = "attn.matmul"
        if node.op_type != "MatMul" or node.input[1] not in consts:
            continue
        scopes = next((p.value for p in node.metadata_props if p.key == _SCOPES), "")
        roles[node.name] = _role(scopes, list(consts[node.input[1]].dims))
    return roles


def _role(scopes: str, dims: list[int]) -> str:
    radio = _radio_role(scopes)  # RADIO / timm block names (vfm's whole-method graph)
    if radio:
        return radio
    if ".mlp.c_fc" in scopes:
        return "mlp.fc"
    if ".mlp.c_proj" in scopes:
        return "mlp.proj"
    if ".attn.out_proj" in scopes:
        return "vv.out"  # only the V-V path calls out_proj as a module; the main path's is inside attention
    if re.search(r"resblocks\.\d+\.attn", scopes):
        return "attn.qkv" if len(dims) == 2 and dims[1] == 3 * dims[0] else "attn.out"
    if "linear" in scopes:
        return "vv.value"
    if "matmul" in scopes:
        return "proj"
    return "other"


def _radio_role(scopes: str) -> str | None:
    for pattern, role in ((r"blocks\.\d+\.attn\.qkv", "attn.qkv"), (r"blocks\.\d+\.attn\.proj", "attn.out"),
                          (r"blocks\.\d+\.mlp\.fc1", "mlp.fc"), (r"blocks\.\d+\.mlp\.fc2", "mlp.proj"),
                          (r"\.patch_embed'", "patch"), (r"'head'", "head")):
        if re.search(pattern, scopes):
            return role
    return None


def prepare(fp32_path: Path):
    """The fp32 graph ready for the quantiser (Gemm rewritten as MatMul + Add)."""
    import onnx

    model = onnx.load(str(fp32_path))
    gemm_to_matmul(model)
    return model


def quantize(model, out: Path, exclude: list[str]) -> None:
    """Dynamic int8 of the weight MatMuls not in ``exclude``."""
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantiser():
        quantize_dynamic(model, out, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         nodes_to_exclude=list(exclude), extra_options={"MatMulConstBOnly": True})


class StaticQuantizer:
    """Static QDQ int8 of a smoothed graph: calibrates once (ranges cached in ``scratch``), then each call
    quantises with other layers left out. ``feeds``: the calibration inputs (``{"images": [1, 3, S, S]}``)."""

    def __init__(self, feeds: list[dict], scratch: Path) -> None:
        self.feeds = feeds
        self.cache = Path(scratch) / "calibration.json"

    def __call__(self, model, out: Path, exclude: list[str]) -> None:
        require_onnxruntime()
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        feeds = self.feeds

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._items = iter(feeds)

            def get_next(self):
                return next(self._items, None)

        import onnx

        source = self.cache.with_name("smoothed.onnx")
        if not source.is_file():  # one file read by every trial: no in-memory copies of a ViT-L sized graph
            onnx.save(model, str(source))
        with _quiet_quantiser():
            quantize_static(source, out, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(exclude), calibration_cache_path=self.cache,
                            extra_options={})


def smoothed(model, feeds: list[dict], alpha: float) -> tuple[object, int]:
    """A copy of the prepared graph with SmoothQuant scaling on every weight MatMul (:mod:`.smooth`)."""
    import onnx

    from zsad.export.smooth import activation_maxima, smooth

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    count = smooth(copy, activation_maxima(copy, list(weight_roles(copy)), feeds), alpha)
    return copy, count


class _quiet_quantiser:
    """The quantiser's generic "consider pre-processing" advice is dropped (done here: weights folded)."""

    def __enter__(self) -> None:
        self._hint = _DropHint()
        logging.getLogger().addFilter(self._hint)

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeFilter(self._hint)


class _DropHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@dataclass
class Int8Result:
    agreement: Int8Agreement
    excluded_roles: list[str]
    excluded_nodes: list[str]
    trials: list[dict] = field(default_factory=list)


def search(fp32_path: Path, out: Path, measure: Callable[[Path], Int8Agreement],
           goal: dict[str, float] = INT8_GOAL, *, model=None,
           quantizer: Callable[[object, Path, list[str]], None] = quantize) -> Int8Result:
    """Write the int8 graph to ``out``, leaving fp32 the roles whose quantisation hurts the maps (measured by
    ``measure(path)`` against fp32); see the module doc. ``model``: the prepared graph when already loaded (a
    smoothed one); ``quantizer``: :func:`quantize` (dynamic) or a :class:`StaticQuantizer`."""
    model = prepare(fp32_path) if model is None else model
    roles = weight_roles(model, activations=isinstance(quantizer, StaticQuantizer))
    present = [r for r in ROLES if r in roles.values()]
    trials: list[dict] = []
    from tqdm.auto import tqdm

    bar = tqdm(desc="int8 exclusion search", unit="trial", file=sys.stderr, disable=None, leave=False)

    def trial(excluded: list[str], only: str | None = None) -> Int8Agreement:
        skip = [n for n, r in roles.items() if r in excluded or (only is not None and r != only)]
        quantizer(model, out, skip)
        agreement = measure(out)  # each trial: quantise + score the check images
        bar.update(1)
        bar.set_postfix(r_min=f"{agreement.pearson_min:.4f}")
        trials.append({"excluded": list(excluded) if only is None else [r for r in present if r != only],
                       "quantized_only": only, **agreement.to_dict()})
        log.info("int8 trial %s: %s", trials[-1]["excluded"], agreement)
        return agreement

    excluded: list[str] = []
    best = trial(excluded)
    if not best.meets(goal) and len(present) > 1:
        harm = {role: 1.0 - trial([], only=role).pearson_min for role in present}
        for role in sorted(present, key=lambda r: -harm[r]):
            if harm[role] <= 1e-6 or len(excluded) == len(present) - 1:
                break
            excluded.append(role)
            best = trial(excluded)
            if best.meets(goal):
                break
        if trials[-1]["quantized_only"] is not None:  # the file on disk is a single-role trial: write the choice
            best = trial(excluded)
    bar.close()
    nodes = sorted(n for n, r in roles.items() if r in excluded)
    return Int8Result(agreement=best, excluded_roles=excluded, excluded_nodes=nodes, trials=trials)
