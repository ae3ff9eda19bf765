"""A backbone whose token extraction runs on ONNX Runtime: what a CPU-only station scores with after
``zsad export``, without PyTorch weights.

It offers the calls methods make on :class:`~zsad.backbones.clip.ClipBackbone` (``tokens``, ``project_patches``,
``encode_text``, ``preprocess``, the facts), but only for what the export recorded: the one ``tokens`` call the
method makes (blocks, V-V path and its start) and the sentences whose text embeddings were computed at export.
Anything else is refused with a message, never silently computed differently. After the graph, ``ln_post`` and
``proj`` (a few MB, stored beside the graph) run in torch, so ``project_patches`` is the very same code.
Preprocessing needs no weights and stays in PIL/torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zsad.backbones.clip import ClipBackbone, TokenOutput
from zsad.backbones.names import BackboneSpec
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


@dataclass(frozen=True)
class TokenCall:
    """The one ``tokens`` call an exported method makes, and which of its outputs the method reads
    (``layers.K`` / ``plain.K``); ``pooled`` and ``cls_raw`` are always exported."""

    layers: tuple[int, ...]
    vv: bool
    vv_start: int | None
    outputs: tuple[str, ...]

    def describe(self) -> str:
        start = f", V-V from block {self.vv_start}" if self.vv and self.vv_start is not None else ""
        return f"blocks {list(self.layers)} ({'V-V' if self.vv else 'plain'} path{start})"

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "vv": self.vv, "vv_start": self.vv_start, "outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, data: dict) -> TokenCall:
        return cls(layers=tuple(int(i) for i in data["layers"]), vv=bool(data["vv"]),
                   vv_start=None if data.get("vv_start") is None else int(data["vv_start"]),
                   outputs=tuple(str(o) for o in data["outputs"]))


@dataclass(frozen=True)
class GraphFacts:
    """The exported tower's shape facts, so methods can size their taps and maps without the weights."""

    num_layers: int
    width: int
    embed_dim: int
    patch_size: int
    image_size: int
    activation: str | None
    pos_interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ln_eps: float = 1e-5


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
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


class OnnxBackbone(nn.Module):
    """Token extraction from an exported graph; the host side (head, text table, preprocessing) in torch on CPU."""

    # the same code as the torch backbone: these need only the facts, mean/std and model.visual's head
    preprocess = ClipBackbone.preprocess
    default_layers = ClipBackbone.default_layers
    check_layers = ClipBackbone.check_layers
    project_patches = ClipBackbone.project_patches

    def __init__(self, session, spec: BackboneSpec, facts: GraphFacts, call: TokenCall, head: dict[str, torch.Tensor],
                 text: tuple[Sequence[str], torch.Tensor] | None = None, *, precision: str = "fp32") -> None:
        super().__init__()
        self.session = session
        self.spec = spec
        self.facts = facts
        self.call = call
        self.precision = precision
        self.activation = facts.activation
        self.pos_interpolation = facts.pos_interpolation
        self.patch_size = facts.patch_size
        self.image_size = facts.image_size
        self.grid_size = facts.image_size // facts.patch_size
        ln_post = nn.LayerNorm(facts.width, eps=facts.ln_eps)
        with torch.no_grad():
            ln_post.weight.copy_(head["ln_post.weight"])
            ln_post.bias.copy_(head["ln_post.bias"])
        self.model = _Model(_Visual(ln_post, head.get("proj"))).eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(facts.mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(facts.std, dtype=torch.float32).view(3, 1, 1), persistent=False)
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

    @property
    def random_weights(self) -> bool:
        return self.spec.random_weights

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
