"""Which runtime is fastest on this CPU, measured at export for ``--runtime auto``: each runtime installed here
whose graph the folder holds runs the graph on one check image (one warm-up, then the median of a few runs), at
the thread count scoring will use (default all of torch's). Only runtimes whose fidelity passed at export are
eligible for ``auto`` (fp32: within the fp32 tolerances of PyTorch; int8: the documented goal, map Pearson r >=
0.99 on every check image and pixel AUROC within 0.005), so ``auto`` never changes results beyond what
``export.json`` records."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from zsad.backbones.export_folder import RUNTIMES, Manifest, engine_of
from zsad.backbones.onnx import open_export, runtime_available
from zsad.export import fidelity

DEFAULT_REPS = 3


def fidelity_ok(runtime: str, manifest: Manifest) -> bool:
    """Whether ``runtime``'s results were measured at export and met the bar (module doc)."""
    if runtime in ("onnx", "openvino"):
        figures = manifest.fidelity.get("fp32" if runtime == "onnx" else "openvino")
        return bool(figures) and fidelity.fp32_ok(figures)
    int8 = manifest.int8 or {}
    figures = int8.get("agreement") if runtime == "onnx-int8" else int8.get("openvino")
    if not figures or int8.get("forced"):
        return False
    return fidelity.int8_ok(figures, fidelity.INT8_GOAL)


def measure(folder: Path, manifest: Manifest, image: Image.Image, *, threads: int | None = None,
            reps: int = DEFAULT_REPS) -> dict[str, Any]:
    """``{runtime: {"s_per_image", "threads", "fidelity_ok"} or {"skipped": why}, "auto": fastest eligible}``."""
    threads = threads or torch.get_num_threads()
    found: dict[str, Any] = {}
    for runtime in RUNTIMES:
        reason = _unavailable(runtime, folder, manifest)
        if reason:
            found[runtime] = {"skipped": reason}
            continue
        backbone = open_export(folder, runtime, threads=threads, model=folder / RUNTIMES[runtime][1])
        feed = {"images": backbone.preprocess([image]).numpy()}
        backbone.session.run(None, feed)  # warm-up: first-call allocations and kernel selection
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            backbone.session.run(None, feed)
            times.append(time.perf_counter() - start)
        found[runtime] = {"s_per_image": round(statistics.median(times), 6), "threads": threads,
                          "fidelity_ok": fidelity_ok(runtime, manifest)}
    eligible = sorted((v["s_per_image"], k) for k, v in found.items() if v.get("fidelity_ok"))
    found["auto"] = eligible[0][1] if eligible else "onnx"
    found["measured_on"] = {"threads": threads, "reps": reps, "what": "the graph on one check image, batch 1"}
    return found


def _unavailable(runtime: str, folder: Path, manifest: Manifest) -> str | None:
    if not runtime_available(runtime):
        return f"{engine_of(runtime)} not installed at export"
    if not (folder / RUNTIMES[runtime][1]).is_file():
        return "no int8 graph (export with --int8)"
    if runtime == "openvino-int8" and not manifest.static_int8:
        return "the int8 graph is dynamic (ONNX Runtime only); --int8 static makes one OpenVINO runs"
    return None
