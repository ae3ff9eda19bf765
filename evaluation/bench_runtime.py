"""Seconds per image and peak memory: PyTorch fp32 vs ONNX Runtime fp32 and int8 (``zsad export``), on CPU.

    python evaluation/bench_runtime.py [--settings ViT-B-16:random@224,ViT-L-14-336:random@518]
                                       [--methods clip,anomalyclip] [--threads 1,2] [--images 2] [--reps 2]
                                       [--check-images 2] [--json out.json]

Per (method, setting) one export (fp32 + int8, fidelity measured as ``zsad export`` does); anomalyclip gets an
untrained prompt adapter of the right shape (speed does not depend on the prompt values). Each (runtime,
threads) is timed in a fresh process: the detector is built, one warm-up batch is scored, then ``--reps`` timed
passes over ``--images`` synthetic images (batch 1, the inspection-station case); s/image is the median pass
divided by the images. Peak memory is the child's peak RSS (VmHWM), model load included. PyTorch threads and
ONNX Runtime intra-op threads are both set to ``threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _images(n: int, size: int):
    import numpy as np

    from zsad.data.synthetic import make_sample

    rng = np.random.default_rng(0)
    return [make_sample("weave", "hole", size=size, rng=rng).image for _ in range(n)]


def child(args: argparse.Namespace) -> None:
    """One timed configuration; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    import zsad

    backbone, size = args.setting.rsplit("@", 1)
    options = {"adapter": args.adapter} if args.method == "anomalyclip" else {}
    if args.runtime == "torch":
        detector = zsad.create(args.method, backbone=backbone, image_size=int(size), device="cpu", precision="fp32",
                               batch_size=1, warn_random=False, **options)
    else:
        detector = zsad.create(args.method, backbone=backbone, image_size=int(size), device="cpu", batch_size=1,
                               runtime=args.runtime, export=args.export, **options)
    images = _images(args.images, int(size))
    detector.score(images[:1])  # warm-up
    passes = []
    for _ in range(args.reps):
        start = time.perf_counter()
        detector.score(images)
        passes.append((time.perf_counter() - start) / len(images))
    print(json.dumps({"s_per_image": statistics.median(passes), "passes": passes, "peak_rss_mib": _peak_mib()}))


def _peak_mib() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss would carry the parent's peak across fork/exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _adapter(backbone_name: str, size: int, folder: Path) -> str:
    import torch

    from zsad.backbones import load_backbone
    from zsad.methods.anomalyclip.adapter import PromptSettings, save_prompt_adapter
    from zsad.methods.anomalyclip.forward import resolve_dpam_layers
    from zsad.methods.anomalyclip.prompts import PromptLearner, resolve_shape, text_width

    backbone = load_backbone(backbone_name, image_size=size, warn_random=False, pos_interpolation="bilinear")
    shape = resolve_shape(backbone)
    torch.manual_seed(0)
    settings = PromptSettings(backbone=backbone_name, image_size=size, taps=tuple(backbone.default_layers(4)),
                              dpam_layers=resolve_dpam_layers(backbone, None), shape=shape, local_weight=1.0)
    save_prompt_adapter(folder, PromptLearner(shape, text_width(backbone)), settings)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="ViT-B-16:random@224,ViT-L-14-336:random@518")
    parser.add_argument("--methods", default="clip,anomalyclip")
    parser.add_argument("--threads", default=None, help="comma list (default: 1, 2 and the CPU count)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--check-images", type=int, default=2)
    parser.add_argument("--json", default=None)
    # child mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("method", "setting", "runtime", "export", "adapter"):
        parser.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--thread-count", dest="threads_one", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.threads = args.threads_one
        child(args)
        return

    from zsad.export.build import ExportRequest, export

    cpus = os.cpu_count() or 1
    threads = sorted({int(t) for t in args.threads.split(",")} if args.threads else {1, 2, cpus} - {0})
    rows = []
    with tempfile.TemporaryDirectory(prefix="zsad-bench-runtime-") as scratch:
        for setting in args.settings.split(","):
            backbone, size = setting.rsplit("@", 1)
            for method in args.methods.split(","):
                folder = Path(scratch) / f"{method}-{len(rows)}"
                options = {}
                adapter = None
                if method == "anomalyclip":
                    adapter = _adapter(backbone, int(size), folder.with_name(folder.name + "-adapter"))
                    options["adapter"] = adapter
                started = time.perf_counter()
                manifest = export(ExportRequest(method=method, backbone=backbone, out=folder, image_size=int(size),
                                                int8=True, force=True, check_images=args.check_images,
                                                options=options))
                export_s = time.perf_counter() - started
                print(f"# exported {method} {setting} in {export_s:.0f} s: fp32 {manifest.fidelity['fp32']}, "
                      f"int8 {manifest.int8['agreement']} kept fp32 {manifest.int8['excluded_roles']}", flush=True)
                for runtime in ("torch", "onnx", "onnx-int8"):
                    for n in threads:
                        cmd = [sys.executable, __file__, "--child", "--method", method, "--setting", setting,
                               "--runtime", runtime, "--export", str(folder), "--thread-count", str(n),
                               "--images", str(args.images), "--reps", str(args.reps)]
                        if adapter:
                            cmd += ["--adapter", adapter]
                        env = {**os.environ, "OMP_NUM_THREADS": str(n)}
                        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                        if done.returncode:
                            print(done.stderr[-2000:], file=sys.stderr)
                            continue
                        result = json.loads(done.stdout.strip().splitlines()[-1])
                        row = {"method": method, "setting": setting, "runtime": runtime, "threads": n, **result,
                               "int8_agreement": manifest.int8["agreement"], "int8_kept_fp32": manifest.int8[
                                   "excluded_roles"], "fp32_fidelity": manifest.fidelity["fp32"], "export_s": export_s}
                        rows.append(row)
                        print(f"{method:12s} {setting:24s} {runtime:10s} threads={n}: "
                              f"{row['s_per_image']:.3f} s/image, peak {row['peak_rss_mib']:.0f} MiB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
