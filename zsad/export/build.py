"""``zsad export``: a method's backbone forward as an ONNX graph in a folder a CPU-only station scores from.

The folder, written whole (:func:`zsad.fileio.atomic_dir`, so a failed or killed export leaves the old one):
``model.onnx`` (fp32 token extraction as the method calls it), ``model.int8.onnx`` (with ``int8``: dynamic, or
static QDQ after SmoothQuant scaling, see :mod:`.quantize`),
``tensors.safetensors`` (``ln_post`` / ``proj``, the text embeddings), ``prompts.yaml`` (a user prompt bank, when
one was given) and ``export.json`` (:class:`~zsad.backbones.export_folder.Manifest`, with the fidelity measured here, on ONNX
Runtime and, where installed, OpenVINO, and each runtime's speed on this CPU for ``--runtime auto``).

Text embeddings are computed once here and stored, not the text tower exported: a station inspects known
products, the sentences are fixed by the class names and prompt bank, and the stored table keeps the tokenizer,
the text tower and its weights off the station (AnomalyCLIP's learned prompts need the tower's internals anyway).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from zsad.backbones.export_folder import (
    MANIFEST,
    MODEL_FP32,
    MODEL_INT8,
    PROMPTS,
    TENSORS,
    GraphFacts,
    Manifest,
    TokenCall,
    folder_sha256,
)
from zsad.backbones.onnx import open_export, require_onnxruntime, runtime_available
from zsad.errors import UsageError
from zsad.export import fidelity, quantize, timing
from zsad.export.graph import DEFAULT_OPSET, export_module, export_tokens, weights_sha256
from zsad.export.record import TextRecorder, record_token_call
from zsad.fileio import atomic_dir

log = logging.getLogger(__name__)

INT8_MODES = ("dynamic", "static")
MAX_CALIBRATION = 64  # calibration images used at most (MinMax ranges settle after a few dozen)


@dataclass
class ExportRequest:
    method: str
    backbone: str
    out: Path
    image_size: int = 518
    class_names: Sequence[str] = ()
    activation: str = "auto"
    int8: bool = False
    #: "dynamic" (ONNX Runtime only) or "static" (calibrated QDQ with SmoothQuant scaling; ONNX Runtime and OpenVINO)
    int8_mode: str = "dynamic"
    #: static int8: a folder of images to calibrate on (default: the fidelity check's synthetic images)
    calibration: Path | None = None
    smooth_alpha: float = 0.5
    #: time each runtime installed here on the check images, recorded for ``--runtime auto``
    measure_runtimes: bool = True
    threads: int | None = None
    force: bool = False
    opset: int = DEFAULT_OPSET
    check_images: int = fidelity.DEFAULT_CHECK_IMAGES
    cache_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # method config fields (adapter=, prompts=, layers=...)


def export(request: ExportRequest) -> Manifest:
    """Export, measure fidelity, and write the folder; refuses (UsageError, nothing written) an fp32 graph that
    does not reproduce PyTorch, or an int8 one below the floor unless ``force``."""
    import onnx

    import zsad
    from zsad.detector import backbone_for, create
    from zsad.methods import list_methods, method_class

    ort = require_onnxruntime()
    if request.int8_mode not in INT8_MODES:
        raise UsageError(f"unknown int8 mode '{request.int8_mode}' (use {' or '.join(INT8_MODES)})")
    calibration = _calibration_images(request.calibration) if request.int8 and request.int8_mode == "static" \
        else None
    cls = method_class(request.method)
    if not cls.exportable:
        raise UsageError(f"method '{request.method}' cannot be exported (exportable: "
                         f"{', '.join(list_methods(exportable=True))})")
    backbone = backbone_for(cls, request.backbone, image_size=request.image_size, device="cpu",
                            activation=request.activation, cache_dir=request.cache_dir, warn_random=False)
    names = [n for n in (s.strip() for s in request.class_names) if n] or ["object"]
    text = TextRecorder()
    with text.on(backbone):
        detector = create(request.method, backbone=backbone, device="cpu", precision="fp32", class_name=names[0],
                          **request.options)
        for name in names[1:]:
            detector.setup(name)
    detector.setup(names[0])  # fidelity is measured for the first class name (the others only add text rows)
    method = detector.method
    count = max(request.check_images, cls.min_batch, 2)
    checks = fidelity.check_images(count, max(request.image_size, 64))
    whole = bool(cls.graph_outputs)  # the method's own forward is the graph (vfm), not the backbone's tokens call
    call = TokenCall(layers=(backbone.num_layers - 1,), vv=False, vv_start=None, outputs=cls.graph_outputs) if whole \
        else record_token_call(backbone, method, backbone.preprocess(checks.images[:1]))
    reference = fidelity.raw_outputs(method, checks.images)
    visual = getattr(backbone.model, "visual", None)
    own = method.backbone  # the method's own copy: vfm folds its adapters in and resizes as its official code
    facts = GraphFacts(num_layers=backbone.num_layers, width=backbone.width, embed_dim=backbone.embed_dim,
                       patch_size=backbone.patch_size, image_size=backbone.image_size,
                       activation=getattr(backbone, "activation", None), pos_interpolation=own.pos_interpolation,
                       mean=tuple(backbone.mean.view(-1).tolist()), std=tuple(backbone.std.view(-1).tolist()),
                       resize="bilinear" if own.resize_filter == Image.BILINEAR else "bicubic",
                       **({"ln_eps": float(visual.ln_post.eps)} if visual is not None else {}))
    tensors = {}
    if visual is not None:
        tensors = {"head.ln_post.weight": visual.ln_post.weight, "head.ln_post.bias": visual.ln_post.bias}
    if visual is not None and visual.proj is not None:
        tensors["head.proj"] = visual.proj
    sentences, embeddings = text.table(backbone.embed_dim)
    if sentences:
        tensors["text.embeddings"] = embeddings
    adapter = None
    if request.method == "anomalyclip":
        tensors["method.text"] = method.text
        adapter = {"path": str(request.options["adapter"]), "sha256": folder_sha256(request.options["adapter"]),
                   "settings": method.settings.to_config(), "taps": list(method.taps)}
    elif whole:  # the method rebuilds itself on ONNX Runtime from its settings (vfm: sizes, rank)
        given = request.options.get("adapter")
        adapter = {"path": str(given) if given else None, "sha256": folder_sha256(given) if given else None,
                   "settings": method.settings.to_config()}
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in request.options.items()}
    manifest = Manifest(
        method=request.method, backbone=request.backbone, weights_sha256=weights_sha256(backbone.model),
        image_size=request.image_size, facts=facts, call=call, opset=request.opset, zsad_version=zsad.__version__,
        precisions=["fp32"], options=options, class_names=names if sentences else [], sentences=sentences,
        adapter=adapter, graph="method" if whole else "tokens",
        versions={"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                  **({"openvino": _openvino_version()} if runtime_available("openvino") else {})})
    with atomic_dir(request.out, keep_others=False) as folder:
        if whole:
            export_module(method, list(cls.graph_outputs), backbone.image_size, folder / MODEL_FP32, opset=request.opset)
        else:
            export_tokens(backbone, call, folder / MODEL_FP32, opset=request.opset)
        _save_tensors(folder / TENSORS, tensors)
        if "prompts" in request.options:
            shutil.copyfile(request.options["prompts"], folder / PROMPTS)
        fp32 = fidelity.fp32_agreement(reference, _scored(folder, manifest, "onnx", None, checks))
        manifest.fidelity = {"images": count, "image_size": request.image_size, "fp32": fp32}
        if not fidelity.fp32_ok(fp32):
            raise UsageError(f"the fp32 ONNX graph does not reproduce PyTorch (maps differ by "
                             f"{fp32['map_max_abs_diff']:.2e}, scores by {fp32['score_max_abs_diff']:.2e}; "
                             f"tolerances {fidelity.FP32_MAP_TOL:g} / {fidelity.FP32_SCORE_TOL:g}); nothing written")
        if runtime_available("openvino"):  # the same graph on OpenVINO, held to the same fp32 tolerances
            manifest.fidelity["openvino"] = fidelity.fp32_agreement(
                reference, _scored(folder, manifest, "openvino", None, checks))
        if request.int8:
            manifest.int8 = _int8(folder, manifest, reference, checks, request, calibration, backbone)
            manifest.precisions.append("int8")
        if request.measure_runtimes:
            manifest.runtimes = timing.measure(folder, manifest, checks.images[0], threads=request.threads)
        (folder / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _openvino_version() -> str:
    import openvino

    return openvino.__version__


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(path))


def _scored(folder: Path, manifest: Manifest, runtime: str, model: Path | None, checks: fidelity.CheckSet):
    """Raw outputs of the check images through the export being written (its manifest is not on disk yet)."""
    from zsad.detector import create

    (folder / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    backbone = open_export(folder, runtime, model=model)
    detector = create(manifest.method, backbone=backbone,
                      class_name=manifest.class_names[0] if manifest.class_names else None)
    return fidelity.raw_outputs(detector.method, checks.images)


def _calibration_images(folder: Path | None) -> list[Image.Image] | None:
    """The user's calibration images (``--calibration DIR``), checked before anything is traced."""
    if folder is None:
        return None
    from zsad.data.images import discover_images, load_image

    if not Path(folder).is_dir():
        raise UsageError(f"--calibration {folder}: not a folder of images")
    found = discover_images([folder])
    if not found:
        raise UsageError(f"--calibration {folder}: no images found")
    images = []
    for item in found[:MAX_CALIBRATION]:
        try:
            images.append(load_image(item.path))
        except UsageError as exc:
            raise UsageError(f"--calibration: {exc}") from None
    if len(found) > MAX_CALIBRATION:
        log.info("calibrating on the first %d of %d images", MAX_CALIBRATION, len(found))
    return images


def _int8(folder: Path, manifest: Manifest, reference, checks: fidelity.CheckSet, request: ExportRequest,
          calibration: list[Image.Image] | None, backbone) -> dict[str, Any]:
    """Quantise with the exclusion search; refuse below the floor unless ``force``."""
    static = request.int8_mode == "static"
    details: dict[str, Any] = {"mode": request.int8_mode}
    with tempfile.TemporaryDirectory(prefix="zsad-int8-") as scratch:
        def measure(path: Path) -> fidelity.Int8Agreement:
            return fidelity.int8_agreement(reference, _scored(folder, manifest, "onnx-int8", path, checks),
                                           checks.masks)

        trial = Path(scratch) / MODEL_INT8
        if static:
            images = calibration if calibration is not None else checks.images
            feeds = [{"images": backbone.preprocess([image]).numpy()} for image in images]
            model, smoothed = quantize.smoothed(quantize.prepare(folder / MODEL_FP32), feeds, request.smooth_alpha)
            result = quantize.search(folder / MODEL_FP32, trial, measure, model=model,
                                     quantizer=quantize.StaticQuantizer(feeds, Path(scratch)))
            details.update(calibration={"images": len(images), "source": str(request.calibration) if
                                        request.calibration is not None else "fidelity check images (synthetic)",
                                        "method": "minmax"},
                           smoothquant={"alpha": request.smooth_alpha, "matmuls": smoothed},
                           quantization="onnxruntime static QDQ, int8 weights per output channel, uint8 "
                                        "activations per tensor (MinMax), weight MatMuls and the attention "
                                        "products (role attn.matmul), SmoothQuant scaling first")
        else:
            result = quantize.search(folder / MODEL_FP32, trial, measure)
            details["quantization"] = "onnxruntime dynamic, int8 weights (per tensor), MatMul only"
        shutil.move(str(trial), folder / MODEL_INT8)
    if static and runtime_available("openvino"):  # the same QDQ graph as OpenVINO runs it
        details["openvino"] = fidelity.int8_agreement(
            reference, _scored(folder, manifest, "openvino-int8", folder / MODEL_INT8, checks), checks.masks).to_dict()
    figures = result.agreement.to_dict()
    below = not result.agreement.meets(fidelity.INT8_FLOOR)
    if below and not request.force:
        raise UsageError(f"int8 maps fall below the floor (Pearson r min {figures['pearson_min']:.4f}, pixel-AUROC "
                         f"change {figures['auroc_delta']:.4f}; floor r >= {fidelity.INT8_FLOOR['pearson_min']}, "
                         f"change <= {fidelity.INT8_FLOOR['auroc_delta']}) even with "
                         f"{result.excluded_roles or 'no'} layers kept fp32; nothing written (--force writes it)")
    return {"agreement": figures, "floor": fidelity.INT8_FLOOR, "goal": fidelity.INT8_GOAL, "forced": below,
            "excluded_roles": result.excluded_roles, "excluded_nodes": result.excluded_nodes,
            "search": result.trials, **details}
