"""A backbone whose token extraction runs on ONNX Runtime: what a CPU-only station scores with after
``zsad export``, without PyTorch weights.

It is a :class:`~zsad.backbones.base.Backbone` like the PyTorch ones (``tokens``, ``project_patches``,
``encode_text``, ``preprocess``, the facts), but only for what the export recorded: the one ``tokens`` call the
method makes (blocks, V-V path and its start) and the sentences whose text embeddings were computed at export.
Anything else is refused with a message, never silently computed differently. After the graph, ``ln_post`` and
``proj`` (a few MB, stored beside the graph) run in torch, so ``project_patches`` is the very same code.
Preprocessing needs no weights and stays in PIL/torch. :func:`open_export` opens a folder made by ``zsad export``
(:mod:`.export_folder`); what a method stored there beside the graph (AnomalyCLIP's learned text) is
:attr:`OnnxBackbone.export`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from zsad.backbones.base import Backbone, TokenOutput
from zsad.backbones.clip import project_tokens
from zsad.backbones.export_folder import AUTO, RUNTIMES, TENSORS, GraphFacts, Manifest, TokenCall, engine_of
from zsad.backbones.names import BackboneSpec, parse_backbone_name
from zsad.errors import UsageError

MISSING_ONNXRUNTIME = ("ONNX Runtime is not installed: install the optional extra with "
                       "`pip install \"zsad[onnx]\"` (from a checkout: pip install -e \".[onnx]\")")


def require_onnxruntime():
    """``onnxruntime``, or one clear :class:`UsageError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(MISSING_ONNXRUNTIME) from None
    return onnxruntime


class _Visual(nn.Module):
    """The part of ``model.visual`` that runs after the graph: ``ln_post`` and ``proj``."""

    def __init__(self, ln_post: nn.LayerNorm, proj: torch.Tensor | None) -> None:
        super().__init__()
        self.ln_post = ln_post
        self.proj = nn.Parameter(proj, requires_grad=False) if proj is not None else None


class _Model(nn.Module):
    def __init__(self, visual: _Visual) -> None:
        super().__init__()
        self.visual = visual


def make_session(path: str | Path, *, threads: int | None = None, device: str = "cpu"):
    """An ONNX Runtime session on the CPU provider, or CUDA's when asked for and present."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the optimiser's notices (unused initialisers) are not the user's
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


class OnnxBackbone(Backbone):
    """Token extraction from an exported graph; the host side (head, text table, preprocessing) in torch on CPU."""

    has_text = True  # CLIP exports: text embeddings from the stored table, patches through the stored head

    def __init__(self, session, spec: BackboneSpec, facts: GraphFacts, call: TokenCall, head: dict[str, torch.Tensor],
                 text: tuple[Sequence[str], torch.Tensor] | None = None, *, precision: str = "fp32") -> None:
        super().__init__()
        self.session = session
        self.facts = facts
        self.call = call
        self.precision = precision
        self.runtime = "onnx"  # which runtime runs the graph (open_export sets it: onnx, openvino-int8, ...)
        self._set_facts(spec, image_size=facts.image_size, patch_size=facts.patch_size, mean=facts.mean,
                        std=facts.std, pos_interpolation=facts.pos_interpolation, activation=facts.activation)
        self.resize_filter = Image.BILINEAR if facts.resize == "bilinear" else Image.BICUBIC  # as the exported one
        ln_post = nn.LayerNorm(facts.width, eps=facts.ln_eps)
        if "ln_post.weight" in head:  # CLIP exports; a whole-method graph (vfm) has no head outside it
            with torch.no_grad():
                ln_post.weight.copy_(head["ln_post.weight"])
                ln_post.bias.copy_(head["ln_post.bias"])
        self.model = _Model(_Visual(ln_post, head.get("proj"))).eval().requires_grad_(False)
        sentences, embeddings = text if text is not None else ((), torch.empty(0, facts.embed_dim))
        self._text = {s: i for i, s in enumerate(sentences)}
        self._text_rows = embeddings.float()
        self._output_names = [o.name for o in session.get_outputs()]
        self._dry = False

    # -- facts, as ClipBackbone has them -------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.facts.num_layers

    @property
    def width(self) -> int:
        return self.facts.width

    @property
    def embed_dim(self) -> int:
        return self.facts.embed_dim

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # the session returns host arrays; the small torch part stays beside them

    # -- the graph -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def dry_run(self) -> Iterator[None]:
        """``tokens`` checks its arguments and returns zeros of the right shapes without running the graph: a
        method's call can be checked against the export in milliseconds."""
        self._dry = True
        try:
            yield
        finally:
            self._dry = False

    def tokens(self, images: torch.Tensor, layers: Sequence[int], *, vv: bool = False,
               vv_start: int | None = None) -> TokenOutput:
        """The exported call's tokens; another call (blocks, path, start) than the export's is a UsageError."""
        asked = (tuple(self.check_layers(layers)), bool(vv), vv_start if vv else None)
        have = (self.call.layers, self.call.vv, self.call.vv_start if self.call.vv else None)
        if asked != have:
            wanted = TokenCall(asked[0], asked[1], asked[2], ())
            raise UsageError(f"this export holds {self.call.describe()}, the method asks for {wanted.describe()}: "
                             f"export again with these method options")
        batch = images.shape[0]
        if self._dry:
            tokens = torch.zeros(batch, 1 + self.grid_size ** 2, self.width)
            values = {name: tokens for name in self.call.outputs}
            values.update(pooled=torch.zeros(batch, self.embed_dim), cls_raw=torch.zeros(batch, self.width))
        else:
            arrays = self.session.run(None, {"images": images.detach().float().cpu().numpy()})
            values = {name: torch.from_numpy(a) for name, a in zip(self._output_names, arrays)}
        found = {kind: {int(n.split(".")[1]): values[n] for n in self.call.outputs if n.startswith(kind + ".")}
                 for kind in ("layers", "plain")}
        return TokenOutput(layers=found["layers"], pooled=values["pooled"], cls_raw=values["cls_raw"],
                           plain=found["plain"])

    def run_graph(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """A whole-method graph's outputs by name (``call.outputs``; in a dry run, zeros of their shapes)."""
        batch = images.shape[0]
        if self._dry:
            return {o.name: torch.zeros([batch if not isinstance(d, int) else d for d in o.shape])
                    for o in self.session.get_outputs()}
        arrays = self.session.run(None, {"images": images.detach().float().cpu().numpy()})
        return {name: torch.from_numpy(a) for name, a in zip(self._output_names, arrays)}

    def project_patches(self, tokens: torch.Tensor) -> torch.Tensor:
        """The stored ``ln_post`` and ``proj``: the same code as the PyTorch backbone's."""
        return project_tokens(self.model.visual, tokens)

    # -- text ----------------------------------------------------------------------------------------------------
    def encode_text(self, sentences: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """The stored embeddings of sentences embedded at export (the text tower is not exported)."""
        missing = [s for s in sentences if s not in self._text]
        if missing:
            raise UsageError(f"this export has no text embedding for {missing[0]!r} ({len(missing)} sentences "
                             f"missing): it was exported for other class names or prompts; export again with "
                             f"--class-name (several: a,b) and the same --prompts")
        if not sentences:
            return torch.empty(0, self.embed_dim)
        return self._text_rows[[self._text[s] for s in sentences]].clone()


@dataclass
class ExportFolder:
    """An export folder as opened: where it is, its manifest, and the tensors stored beside the graph (``head.*``,
    ``text.embeddings``, ``method.*`` such as AnomalyCLIP's learned text)."""

    path: Path
    manifest: Manifest
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def only_class(self) -> str | None:
        """The class name to set a method up with when the export holds text for one class only."""
        names = self.manifest.class_names
        return names[0] if len(names) == 1 else None


def resolve_runtime_device(device: str | torch.device) -> str:
    """``auto``: CUDA when ONNX Runtime has its CUDA provider here, else CPU."""
    ort = require_onnxruntime()
    name = str(device)
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if name == "auto":
        return "cuda" if cuda else "cpu"
    if name.startswith("cuda") and not cuda:
        raise UsageError(f"device '{name}' was asked for, but this onnxruntime has no CUDA provider "
                         f"(install onnxruntime-gpu, or use --device cpu)")
    return name


def open_export(folder: str | Path, runtime: str = "onnx", *, device: str | torch.device = "cpu",
                threads: int | None = None, model: Path | None = None) -> OnnxBackbone:
    """The backbone of an export folder (made by ``zsad export``); ``runtime`` picks the engine and graph: ONNX
    Runtime fp32 (``onnx``) or int8 (``onnx-int8``), OpenVINO on the same graphs (``openvino``,
    ``openvino-int8``), or ``auto`` (the fastest measured at export whose fidelity passed, see
    :func:`resolve_auto`); ``model`` overrides the graph file (e.g. an int8 trial). ``backbone.runtime`` says
    which ran."""
    from safetensors.torch import load_file

    from zsad.backbones.export_folder import read_manifest

    if runtime not in RUNTIMES and runtime != AUTO:
        raise UsageError(f"unknown runtime '{runtime}' (use torch, {', '.join(RUNTIMES)} or {AUTO})")
    path, manifest = read_manifest(folder)
    if runtime == AUTO:
        runtime = resolve_auto(manifest, str(path))
    precision, name = RUNTIMES[runtime]
    graph = model or path / name
    if not graph.is_file():
        hint = f" (export again with --int8{' static' if runtime == 'openvino-int8' else ''})" \
            if precision == "int8" else " (export again)"
        raise UsageError(f"export {path} has no {name}{hint}")
    if runtime == "openvino-int8" and model is None and not manifest.static_int8:
        raise UsageError(f"export {path}: openvino-int8 runs the static int8 graph, this export's is dynamic "
                         f"(ONNX Runtime only); export again with --int8 static, or use --runtime onnx-int8")
    tensors = _read_tensors(path / TENSORS, load_file)
    head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    text = (manifest.sentences, tensors["text.embeddings"]) if "text.embeddings" in tensors else None
    session = _session(runtime, graph, threads or torch.get_num_threads(), device)
    backbone = OnnxBackbone(session, parse_backbone_name(manifest.backbone), manifest.facts, manifest.call, head,
                            text, precision=precision)
    backbone.export = ExportFolder(path, manifest, tensors)
    backbone.runtime = runtime
    return backbone


def _read_tensors(path: Path, load_file) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UsageError(f"{path} is missing: the export folder is incomplete; export again")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a truncated or foreign file
        raise UsageError(f"{path} cannot be read ({_first_line(exc)}): the file is damaged; export again") from None


def _session(runtime: str, graph: Path, threads: int, device):
    """The engine's session for ``graph``; a file the engine cannot read is one UsageError naming it."""
    if engine_of(runtime) == "openvino":
        from zsad.backbones.openvino import make_openvino_session, require_openvino

        require_openvino()  # a missing package is its own message, not a damaged file
        name = str(device)
        make, where = make_openvino_session, ("cpu" if name == "auto" else name)
    else:
        make, where = make_session, resolve_runtime_device(device)
    try:
        return make(graph, threads=threads, device=where)
    except UsageError:
        raise
    except Exception as exc:  # the engines raise their own types (protobuf parse, Fail, RuntimeError)
        raise UsageError(f"{graph} cannot be loaded by {engine_of(runtime)} ({_first_line(exc)}): the file is "
                         f"damaged or not an ONNX graph; export again") from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    plain = [line for line in lines if not line.startswith(("Exception from", "Check '", "FrontEnd API failed"))]
    text = (plain or lines or [type(exc).__name__])[-1 if plain else 0]  # OpenVINO's reason is its last line
    return text[:200]


def runtime_available(runtime: str) -> bool:
    """Whether this machine has the engine ``runtime`` runs on (its package imports)."""
    try:
        __import__(engine_of(runtime))
    except ImportError:
        return False
    return True


def resolve_auto(manifest: Manifest, where: str) -> str:
    """``auto``: the runtime recorded as fastest at export among those whose fidelity passed and whose engine is
    installed here (never one whose results were not measured against PyTorch); an export without measurements
    runs ``onnx`` (fp32, which reproduces PyTorch)."""
    measured = {k: v for k, v in manifest.runtimes.items() if isinstance(v, dict) and k in RUNTIMES}
    ranked = sorted((v["s_per_image"], k) for k, v in measured.items()
                    if v.get("fidelity_ok") and v.get("s_per_image") is not None)
    for _, runtime in ranked:
        if runtime_available(runtime):
            return runtime
    if not ranked:
        return "onnx"
    raise UsageError(f"export {where}: none of the runtimes measured at export ({', '.join(k for _, k in ranked)}) "
                     f"is installed here; pip install \"zsad[onnx]\" or \"zsad[openvino]\"")
