"""Scoring from an export folder: the method's own code over an :class:`~zsad.backbones.onnx.OnnxBackbone`, so
only the backbone forward runs on ONNX Runtime and ``raw``, decisions and outputs are the PyTorch path's.

Needs nothing but the folder (``export.json``, the graph, ``tensors.safetensors``): no PyTorch weights, no text
tower, no adapter. ``clip``, ``musc`` and ``auto`` run unchanged on the ONNX backbone (their text embeddings come
from the stored table); ``anomalyclip`` gets its learned text embeddings from the export instead of its adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zsad.backbones.names import parse_backbone_name
from zsad.backbones.onnx import OnnxBackbone, make_session, require_onnxruntime
from zsad.errors import UsageError
from zsad.export.manifest import PROMPTS, RUNTIMES, TENSORS, Manifest, check_request, read_manifest
from zsad.methods import method_class
from zsad.methods.anomalyclip.adapter import PromptSettings
from zsad.methods.anomalyclip.method import AnomalyClipConfig, AnomalyClipMethod
from zsad.methods.base import Method


class ExportedAnomalyClip(AnomalyClipMethod):
    """AnomalyCLIP with the learned prompts' text embeddings taken from an export (no adapter, no text tower)."""

    def __init__(self, backbone: OnnxBackbone, *, dtype: torch.dtype, config: AnomalyClipConfig,
                 settings: PromptSettings, taps: list[int], text: torch.Tensor) -> None:
        Method.__init__(self, backbone, dtype=dtype)
        self.config = config
        self.settings = settings
        self.taps = list(taps)
        self.learner = None
        self.register_buffer("text", text.float(), persistent=False)


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


def open_backbone(folder: Path, manifest: Manifest, runtime: str = "onnx", *, threads: int | None = None,
                  device: str = "cpu", model: Path | None = None) -> OnnxBackbone:
    """The ONNX backbone of an export (``model`` overrides the graph file, e.g. an int8 trial)."""
    from safetensors.torch import load_file

    precision, name = RUNTIMES[runtime]
    path = model or folder / name
    if not path.is_file():
        hint = " (export again with --int8)" if runtime == "onnx-int8" else ""
        raise UsageError(f"export {folder} has no {name}{hint}")
    tensors = load_file(str(folder / TENSORS))
    head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    text = (manifest.sentences, tensors["text.embeddings"]) if "text.embeddings" in tensors else None
    session = make_session(path, threads=threads or torch.get_num_threads(), device=device)
    return OnnxBackbone(session, parse_backbone_name(manifest.backbone), manifest.facts, manifest.call, head, text,
                        precision=precision)


def build_method(folder: Path, manifest: Manifest, backbone: OnnxBackbone, options: dict[str, Any]) -> Method:
    """The exported method over ``backbone``; ``options`` (method config fields) override the export's. The
    method's backbone call is checked against the export at once (a dry run, no graph)."""
    cls = method_class(manifest.method)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest.options.items()}
    if "prompts" in values and "prompts" not in options:
        values["prompts"] = str(folder / PROMPTS)
    values.update(options)
    if cls.config_class is not None:
        from dataclasses import fields

        known = {f.name for f in fields(cls.config_class)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"method '{manifest.method}' has no option(s) {unknown}; options: {sorted(known)}")
    config = cls.config_class(**values) if cls.config_class is not None else None
    if manifest.method == "anomalyclip":
        from safetensors.torch import load_file

        text = load_file(str(folder / TENSORS))["method.text"]
        settings = PromptSettings.from_config(manifest.adapter["settings"], str(folder))
        method = ExportedAnomalyClip(backbone, dtype=torch.float32, config=config, settings=settings,
                                     taps=manifest.adapter["taps"], text=text)
    else:
        method = cls(backbone, dtype=torch.float32, **({"config": config} if config is not None else {}))
    size = backbone.image_size
    method.setup(manifest.class_names[0] if manifest.class_names else None)  # text from the stored table
    with backbone.dry_run(), torch.inference_mode():
        method.extract(torch.zeros(1, 3, size, size))
    return method


def create_onnx_method(method: str, export: str | Path | None, *, runtime: str = "onnx", backbone: Any,
                       device: str | torch.device = "auto", precision: str = "auto", image_size: int,
                       activation: str = "auto", **method_options) -> tuple[Method, str | None]:
    """The method of :func:`zsad.create` with ``runtime="onnx"`` / ``"onnx-int8"`` (its backbone forward runs on
    ONNX Runtime from the export folder) and the class name to set it up with when the export has only one; an
    export made for something else than asked is refused."""
    folder, manifest = _open_export(export, runtime=runtime, backbone=backbone, precision=precision)
    check_request(manifest, method=method, backbone=backbone, image_size=image_size, activation=activation,
                  adapter=method_options.pop("adapter", None), where=str(folder))
    onnx_backbone = open_backbone(folder, manifest, runtime, device=resolve_runtime_device(device))
    only = manifest.class_names[0] if len(manifest.class_names) == 1 else None
    return build_method(folder, manifest, onnx_backbone, method_options), only


def create_onnx_reference_method(method: str, export: str | Path | None, references: Sequence[Any], *,
                                 runtime: str = "onnx", backbone: Any, device: str | torch.device = "auto",
                                 precision: str = "auto", image_size: int, activation: str = "auto",
                                 batch_size: int = 8, **method_options) -> Method:
    """The method of :func:`zsad.create` with ``references=`` and an ONNX runtime: the references' memory bank
    and every test image's patch tokens come from a ``musc`` export (reference scoring uses MuSc's patch features,
    whatever ``method`` is; ``method`` only says whether batches are joint, as on PyTorch)."""
    from zsad.methods.reference.build import reference_config, reference_scorer

    folder, manifest = _open_export(export, runtime=runtime, backbone=backbone, precision=precision)
    if manifest.method != "musc":
        raise UsageError(f"export {folder} was made for method {manifest.method!r}; scoring against references uses "
                         f"MuSc's patch tokens: export with --method musc")
    check_request(manifest, method="musc", backbone=backbone, image_size=image_size, activation=activation,
                  adapter=None, where=str(folder))
    options = dict(method_options)
    if "layers" in manifest.options and "layers" not in options:
        options["layers"] = tuple(manifest.options["layers"])
    config = reference_config(options, batch_size)
    onnx_backbone = open_backbone(folder, manifest, runtime, device=resolve_runtime_device(device))
    scorer = reference_scorer(onnx_backbone, method, dtype=torch.float32, config=config)
    size = onnx_backbone.image_size
    with onnx_backbone.dry_run(), torch.inference_mode():  # the call is checked before any reference is read
        scorer.extract(torch.zeros(1, 3, size, size))
    scorer.set_references(list(references))
    return scorer


def _open_export(export: str | Path | None, *, runtime: str, backbone: Any, precision: str) -> tuple[Path, Manifest]:
    """The export folder and manifest for a runtime; the arguments an ONNX runtime cannot take are refused."""
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime '{runtime}' (use torch, {', '.join(RUNTIMES)})")
    if export is None:
        raise UsageError(f"runtime '{runtime}' scores from an export folder: pass export=DIR (--export DIR), made "
                         f"with `zsad export`")
    if not isinstance(backbone, str):
        raise UsageError("with an ONNX runtime, backbone must be the name the export was made for, not a model")
    if precision not in ("auto", "fp32"):
        raise UsageError(f"precision '{precision}' does not apply to an ONNX export: runtime 'onnx' runs fp32, "
                         f"'onnx-int8' the int8 graph")
    return read_manifest(export)
