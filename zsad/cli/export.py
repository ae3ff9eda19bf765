"""``zsad export``: a method's backbone forward as ONNX for CPU-only stations; and ``zsad score``'s
``--runtime onnx|onnx-int8|openvino|openvino-int8|auto --export DIR --threads N`` flags, whose unset model
options default to the export's."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zsad.errors import UsageError

#: score flags that default to the export's values when not given on the command line
_FROM_EXPORT = ("method", "backbone", "image_size", "class_name")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from zsad.backbones.names import DEFAULT_BACKBONE
    from zsad.export.fidelity import DEFAULT_CHECK_IMAGES, INT8_FLOOR
    from zsad.export.graph import DEFAULT_OPSET
    from zsad.methods import list_methods

    p = sub.add_parser("export", help="export a method's backbone forward to ONNX (fp32, and int8 with --int8) for "
                                      "ONNX Runtime and OpenVINO")
    p.add_argument("--method", required=True, choices=list_methods(exportable=True))
    p.add_argument("--backbone", default=None,
                   help=f"as for zsad score (default: the method's, {DEFAULT_BACKBONE} for the CLIP methods)")
    p.add_argument("--adapter", default=None,
                   help="anomalyclip: the learned-prompt adapter folder; vfm: the AnomalyVFM adapter folder (folded "
                        "into the graph)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size the graph is made for (default: the method's, 518 for the CLIP methods)")
    p.add_argument("--class-name", default=None,
                   help='clip/auto: the class name(s) whose text embeddings are stored, "a,b" for several '
                        '(default "object")')
    p.add_argument("--prompts", default=None, help="clip/auto: a prompt-bank YAML (copied into the export)")
    p.add_argument("--activation", default="auto",
                   help="the backbone's MLP activation baked into the graph: auto (default; what the method's "
                        "published code used, as for zsad score), gelu or quick_gelu")
    p.add_argument("--out", required=True, help="the export folder (replaced whole)")
    p.add_argument("--int8", nargs="?", const="dynamic", default=None, choices=["dynamic", "static"],
                   help="also write model.int8.onnx, harmful layers kept fp32 by a measured search. dynamic (the "
                        "default mode): int8 weights, activations quantised per call, ONNX Runtime only; static: "
                        "SmoothQuant scaling and activation ranges from --calibration images, a QDQ graph that "
                        "ONNX Runtime and OpenVINO (--runtime openvino-int8) both run as int8")
    p.add_argument("--calibration", default=None, metavar="DIR",
                   help="--int8 static: good images of the product to calibrate on (up to 64; default: the "
                        "synthetic images of the fidelity check)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads the runtimes are timed with at export for --runtime auto (default: all cores; "
                        "use the station's setting)")
    p.add_argument("--force", action="store_true",
                   help=f"write the int8 graph even below the fidelity floor (Pearson r >= "
                        f"{INT8_FLOOR['pearson_min']}, pixel-AUROC change <= {INT8_FLOOR['auroc_delta']})")
    p.add_argument("--check-images", type=int, default=DEFAULT_CHECK_IMAGES,
                   help=f"synthetic images the fidelity is measured on (default {DEFAULT_CHECK_IMAGES})")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder for weights")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zsad.backbones.names import DEFAULT_BACKBONE, parse_backbone_name
    from zsad.cli import EXIT_OK
    from zsad.cli.options import warn_random_weights
    from zsad.export.build import ExportRequest, export
    from zsad.methods import method_class

    cls = method_class(args.method)  # flags not given: the method's own model (vfm: RADIO v2.5-L at 768)
    args.backbone = args.backbone or getattr(cls, "default_backbone", None) or DEFAULT_BACKBONE
    args.image_size = args.image_size or getattr(cls, "default_image_size", None) or 518
    options = {k: getattr(args, k) for k in ("adapter", "prompts") if getattr(args, k)}
    request = ExportRequest(method=args.method, backbone=args.backbone, out=Path(args.out), image_size=args.image_size,
                            class_names=(args.class_name or "").split(","), activation=args.activation,
                            int8=args.int8 is not None, int8_mode=args.int8 or "dynamic",
                            calibration=Path(args.calibration) if args.calibration else None,
                            threads=args.threads, force=args.force, opset=args.opset, check_images=args.check_images,
                            cache_dir=args.cache_dir, options=options)
    manifest = export(request)
    warn_random_weights(parse_backbone_name(args.backbone), args.backbone,
                        "the export is for tests and speed measurements only")
    fp32 = manifest.fidelity["fp32"]
    print(f"zsad: exported {args.method} on {args.backbone} @{args.image_size} ({manifest.call.describe()}) -> "
          f"{args.out}; fp32 vs PyTorch: maps {fp32['map_max_abs_diff']:.1e}, scores "
          f"{fp32['score_max_abs_diff']:.1e}", file=sys.stderr)
    if manifest.int8:
        agreement = manifest.int8["agreement"]
        kept = ", ".join(manifest.int8["excluded_roles"]) or "none"
        print(f"zsad: int8 ({manifest.int8['mode']}): Pearson r min {agreement['pearson_min']:.4f}, pixel AUROC "
              f"{agreement['auroc_fp32']:.4f} -> {agreement['auroc_int8']:.4f}; layers kept fp32: {kept}"
              + (" (below the floor, written with --force)" if manifest.int8["forced"] else ""), file=sys.stderr)
    if manifest.runtimes:
        speeds = ", ".join(f"{k} {v['s_per_image']:.3g} s" + ("" if v["fidelity_ok"] else " (fidelity not met)")
                           for k, v in manifest.runtimes.items() if isinstance(v, dict) and "s_per_image" in v)
        print(f"zsad: runtimes on this CPU ({manifest.runtimes['measured_on']['threads']} threads, per image): "
              f"{speeds}; --runtime auto runs {manifest.runtimes['auto']}", file=sys.stderr)
    return EXIT_OK


# -- zsad score --runtime ----------------------------------------------------------------------------------------

class _DefaultStr(str):
    """A string argparse filled in (the flag was not given)."""


class _DefaultInt(int):
    """An int argparse filled in (the flag was not given)."""


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """``--runtime``, ``--export`` and ``--threads``; call after the model options, whose defaults it marks as not
    given."""
    from zsad.backbones.export_folder import AUTO, RUNTIMES

    p.add_argument("--runtime", default="torch", choices=["torch", *RUNTIMES, AUTO],
                   help="torch (default); onnx / onnx-int8: the backbone forward on ONNX Runtime from --export DIR "
                        "(method, backbone, image size and class name default to the export's); openvino / "
                        "openvino-int8: the same graphs on OpenVINO (pip install \"zsad[openvino]\"; int8 needs "
                        "an export made with --int8 static); auto: the fastest runtime measured at export whose "
                        "fidelity passed (the one chosen is printed)")
    p.add_argument("--export", default=None, metavar="DIR", help="an export folder made by `zsad export`")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads: PyTorch's and the export engine's intra-op threads (ONNX Runtime; OpenVINO "
                        "INFERENCE_NUM_THREADS); default: all cores. For throughput on many images, a larger "
                        "--batch-size helps more than threads beyond the physical cores")
    for action in p._actions:
        if action.dest in _FROM_EXPORT and isinstance(action.default, str):
            action.default = _DefaultStr(action.default)
        elif action.dest in _FROM_EXPORT and isinstance(action.default, int):
            action.default = _DefaultInt(action.default)


def _given(value) -> bool:
    return value is not None and not isinstance(value, (_DefaultStr, _DefaultInt))


def runtime_options(args: argparse.Namespace) -> dict:
    """``create()`` keywords for the runtime; with an export runtime, fills the model flags not given from the
    export (a given one that differs is refused by ``create``); ``auto`` is resolved here and said on stderr."""
    runtime = getattr(args, "runtime", "torch")
    export = getattr(args, "export", None)
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)  # this process's PyTorch (host-side parts, or the whole model on torch)
    if runtime == "torch":
        if export is not None:
            raise UsageError("--export DIR is for --runtime onnx, onnx-int8, openvino, openvino-int8 or auto")
        return {}
    if export is None:
        raise UsageError(f"--runtime {runtime} needs --export DIR (a folder made by `zsad export`)")
    from zsad.backbones.export_folder import AUTO, read_manifest

    folder, manifest = read_manifest(export)
    found = {"method": manifest.method, "backbone": manifest.backbone, "image_size": manifest.image_size,
             "class_name": manifest.class_names[0] if len(manifest.class_names) == 1 else None}
    for key in _FROM_EXPORT:
        if hasattr(args, key) and not _given(getattr(args, key)):
            setattr(args, key, found[key])
    if runtime == AUTO:
        from zsad.backbones.onnx import resolve_auto

        runtime = resolve_auto(manifest, str(folder))
        measured = manifest.runtimes.get(runtime) or {}
        speed = f"{measured['s_per_image']:.3g} s/image at export" if measured.get("s_per_image") else "unmeasured"
        if not getattr(args, "quiet", False):
            print(f"zsad: --runtime auto: {runtime} ({speed}; fidelity recorded in {folder}/export.json)",
                  file=sys.stderr)
    return {"runtime": runtime, "export": export, "threads": threads}
