"""An export folder as a backbone reads it: ``export.json`` (what the folder holds and how it was made), the
facts of the exported tower, the one ``tokens`` call it was traced for, and the checks that refuse to score with an
export made for something else than what is asked (method, backbone, size, activation, adapter).

``zsad export`` (:mod:`zsad.export.build`) writes these folders; :func:`zsad.backbones.onnx.open_export` opens
one as a backbone."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsad.errors import UsageError
from zsad.fileio import read_json, settle_dir

FORMAT_VERSION = 1
MANIFEST = "export.json"
MODEL_FP32 = "model.onnx"
MODEL_INT8 = "model.int8.onnx"
TENSORS = "tensors.safetensors"
PROMPTS = "prompts.yaml"
#: runtime name -> (precision, graph file); the openvino ones read the same ONNX graphs (OpenVINO's ONNX frontend)
RUNTIMES = {"onnx": ("fp32", MODEL_FP32), "onnx-int8": ("int8", MODEL_INT8),
            "openvino": ("fp32", MODEL_FP32), "openvino-int8": ("int8", MODEL_INT8)}
#: ``--runtime auto``: the fastest runtime measured at export whose fidelity passed (``Manifest.runtimes``)
AUTO = "auto"


def engine_of(runtime: str) -> str:
    """The inference engine a runtime name runs on: ``onnxruntime`` or ``openvino``."""
    return "openvino" if runtime.startswith("openvino") else "onnxruntime"


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
    #: the squash-resize filter of the backbone's preprocessing (RADIO and timm: bilinear; CLIP: bicubic)
    resize: str = "bicubic"


@dataclass
class Manifest:
    """The fields of ``export.json`` (see README, "Deploy on CPU")."""

    method: str
    backbone: str
    weights_sha256: str
    image_size: int
    facts: GraphFacts
    call: TokenCall
    opset: int
    zsad_version: str
    precisions: list[str]
    options: dict[str, Any] = field(default_factory=dict)  # the method options given at export
    class_names: list[str] = field(default_factory=list)
    sentences: list[str] = field(default_factory=list)  # rows of text.embeddings in tensors.safetensors
    adapter: dict[str, Any] | None = None  # {"path", "sha256", "settings", "taps"} for anomalyclip
    #: "tokens": the graph is the backbone's ``tokens`` call (``call``); "method": the method's whole forward, its
    #: outputs named in ``call.outputs`` (vfm)
    graph: str = "tokens"
    fidelity: dict[str, Any] = field(default_factory=dict)
    int8: dict[str, Any] | None = None
    #: runtime -> {"s_per_image", "threads", "fidelity_ok", ...} measured on the exporting CPU, and "auto": the
    #: fastest that passed (:mod:`zsad.export.timing`)
    runtimes: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def layers(self) -> list[int]:
        return list(self.call.layers)

    @property
    def static_int8(self) -> bool:
        """Whether the int8 graph is static QDQ, the one OpenVINO runs as int8 (a dynamic one is ONNX Runtime's)."""
        return (self.int8 or {}).get("mode", "dynamic") == "static"

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["facts"] = dataclasses.asdict(self.facts)
        data["call"] = self.call.to_dict()
        data["layers"] = self.layers
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Manifest:
        try:
            facts = dict(data["facts"])
            facts["mean"], facts["std"] = tuple(facts["mean"]), tuple(facts["std"])
            known = {f.name for f in dataclasses.fields(cls)}
            values = {k: v for k, v in data.items() if k in known}
            values.update(facts=GraphFacts(**facts), call=TokenCall.from_dict(data["call"]))
            manifest = cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{where}: not a zsad export ({type(exc).__name__}: {exc})") from None
        if manifest.format_version > FORMAT_VERSION:
            raise UsageError(f"{where}: export format {manifest.format_version} is newer than this zsad reads "
                             f"({FORMAT_VERSION}); upgrade zsad")
        return manifest


def read_manifest(folder: str | Path) -> tuple[Path, Manifest]:
    """The export folder (settled, if a writer died mid-swap) and its manifest; a missing folder or file is a
    UsageError naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"export folder {folder} does not exist (make one with `zsad export ... --out {folder}`)")
    folder = settle_dir(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise UsageError(f"{folder} is not a zsad export: it has no {MANIFEST}")
    return folder, Manifest.from_dict(read_json(path, UsageError, MANIFEST), str(path))


def folder_sha256(folder: str | Path) -> str:
    """A content hash of every file under ``folder`` (relative names and bytes), e.g. an adapter."""
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_request(manifest: Manifest, *, method: str, backbone: str, image_size: int, activation: str,
                  adapter: str | None, where: str) -> None:
    """Refuse an export made for another method, backbone, size, activation or adapter than asked."""
    asked = {"method": method, "backbone": backbone, "image size": int(image_size)}
    have = {"method": manifest.method, "backbone": manifest.backbone, "image size": manifest.image_size}
    if activation != "auto":
        asked["activation"], have["activation"] = activation, manifest.facts.activation
    for key in asked:
        if asked[key] != have[key]:
            raise UsageError(f"export {where} was made for {key} {have[key]!r}, not {asked[key]!r} as asked; "
                             f"export again (zsad export) or ask for what it holds")
    if adapter is not None:
        if manifest.adapter is None:
            raise UsageError(f"export {where} holds no adapter, but --adapter {adapter} was given")
        if not Path(adapter).is_dir():
            raise UsageError(f"adapter folder {adapter} does not exist")
        if folder_sha256(adapter) != manifest.adapter["sha256"]:
            raise UsageError(f"export {where} was made with another adapter than {adapter} "
                             f"(it holds {manifest.adapter['path']}); export again with --adapter {adapter}")
