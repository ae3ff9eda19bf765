"""Seconds per image, peak memory and fidelity per runtime: PyTorch fp32, ONNX Runtime fp32 / int8 dynamic /
int8 static, OpenVINO fp32 / int8 (static QDQ), and the official AnomalyCLIP code where a checkout is given, on
CPU.

    python evaluation/bench_runtime.py [--settings ViT-B-16:random@224,ViT-L-14-336:random@518]
                                       [--methods clip,anomalyclip,musc] [--threads 1,2] [--images 2] [--reps 2]
                                       [--check-images 2] [--int8-modes dynamic,static] [--runtimes ...]
                                       [--official-anomalyclip /path/to/AnomalyCLIP] [--json out.json]

Per (method, setting, int8 mode) one export (fp32 + int8, fidelity measured as ``zsad export`` does, on ONNX
Runtime and OpenVINO); anomalyclip gets an untrained prompt adapter of the right shape (speed does not depend on
the prompt values). Each (runtime, threads) is timed in a fresh process: the detector is built, one warm-up
image is scored, then ``--reps`` timed passes over ``--images`` synthetic images (batch 1, the inspection-station
case); s/image is the median pass divided by the images. musc is timed as its token extraction per image
(``method.extract`` on one image: mutual scoring needs a batch and does not depend on the runtime). Peak memory
is the child's peak RSS (VmHWM), model load included. PyTorch threads, ONNX Runtime intra-op threads and OpenVINO
INFERENCE_NUM_THREADS are all set to ``threads``. Fidelity per row is the export's own record: fp32 rows the
largest map difference from PyTorch, int8 rows the smallest per-image map Pearson r and the pixel-AUROC change
on the planted-defect check images. The 1-minute load average is recorded before and after every row (the
machine may be shared).

``--official-anomalyclip DIR`` (a checkout of zqhang/AnomalyCLIP, not committed) adds its test loop, timed the
same way: its own ``build_model`` from a seeded random open_clip state dict of the same architecture, its
``encode_image(image, [6, 12, 18, 24], DPAM_layer=20)``, image/text probability, the similarity maps at the
input size, their sum and ``gaussian_filter(sigma=4)``; text features computed once before timing.
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
    backbone, size = args.setting.rsplit("@", 1)
    images = _images(args.images, int(size))
    if args.runtime == "official":
        run = _official_anomalyclip(args, backbone, int(size))
    else:
        run = _zsad(args, backbone, int(size))
    run(images[:1])  # warm-up
    passes = []
    for _ in range(args.reps):
        start = time.perf_counter()
        run(images)
        passes.append((time.perf_counter() - start) / len(images))
    print(json.dumps({"s_per_image": statistics.median(passes), "passes": passes, "peak_rss_mib": _peak_mib()}))


def _zsad(args: argparse.Namespace, backbone: str, size: int):
    """zsad's detector on ``args.runtime``: scoring per image, or musc's token extraction per image."""
    import torch

    import zsad

    options = {"adapter": args.adapter} if args.method == "anomalyclip" else {}
    if args.runtime == "torch":
        detector = zsad.create(args.method, backbone=backbone, image_size=size, device="cpu", precision="fp32",
                               batch_size=1, warn_random=False, **options)
    else:
        detector = zsad.create(args.method, backbone=backbone, image_size=size, device="cpu", batch_size=1,
                               runtime=args.runtime.removesuffix("-static"), export=args.export,
                               threads=args.threads, **options)
    if args.method != "musc":
        return detector.score

    def extract(images) -> None:
        with torch.inference_mode():
            for image in images:
                detector.method.extract(detector.backbone.preprocess([image]))

    return extract


def _official_anomalyclip(args: argparse.Namespace, backbone: str, size: int):
    """The official AnomalyCLIP test loop (``test.py``) on a seeded random model; see the module doc."""
    import types

    import numpy as np
    import open_clip
    import packaging.version
    import torch
    from scipy.ndimage import gaussian_filter

    sys.modules.setdefault("pkg_resources", types.SimpleNamespace(packaging=packaging))  # its import, gone here
    sys.modules.setdefault("thop", types.SimpleNamespace(profile=None))  # imported, unused by test.py
    sys.path.insert(0, args.official)
    import AnomalyCLIP_lib  # the checkout given by path
    from AnomalyCLIP_lib.build_model import build_model
    from prompt_ensemble import AnomalyCLIP_PromptLearner
    from utils import get_transform

    arch = backbone.split(":")[0]
    torch.manual_seed(0)
    state = open_clip.create_model(arch, pretrained=None).state_dict()
    details = {"Prompt_length": 12, "learnabel_text_embedding_depth": 9, "learnabel_text_embedding_length": 4}
    model = build_model(arch, state, design_details=details).float().eval()
    blocks = len(model.visual.transformer.resblocks)
    features = [blocks // 4, blocks // 2, 3 * blocks // 4, blocks]  # test.py: [6, 12, 18, 24] on ViT-L
    dpam = blocks - 4  # test.py: DPAM_layer = 20 on ViT-L
    learner = AnomalyCLIP_PromptLearner(model.to("cpu"), details)
    model.visual.DAPM_replace(DPAM_layer=dpam)
    with torch.no_grad():
        prompts, tokenized, compound = learner(cls_id=None)
        text = model.encode_text_learn(prompts, tokenized, compound).float()
        text = torch.stack(torch.chunk(text, dim=0, chunks=2), dim=1)
        text = text / text.norm(dim=-1, keepdim=True)
    preprocess, _ = get_transform(argparse.Namespace(image_size=size))

    def run(images) -> None:  # test.py's per-image body, batch 1
        with torch.no_grad():
            for image in images:
                x = preprocess(image).unsqueeze(0)
                image_features, patch_features = model.encode_image(x, features, DPAM_layer=dpam)
                image_features = image_features / image_features.norm(dim=-1, keepdim=True)
                ((image_features @ text.permute(0, 2, 1)) / 0.07).softmax(-1)[:, 0, 1]
                maps = []
                for patch in patch_features:
                    patch = patch / patch.norm(dim=-1, keepdim=True)
                    similarity, _ = AnomalyCLIP_lib.compute_similarity(patch, text[0])
                    similarity_map = AnomalyCLIP_lib.get_similarity_map(similarity[:, 1:, :], size)
                    maps.append((similarity_map[..., 1] + 1 - similarity_map[..., 0]) / 2.0)
                total = torch.stack(maps).sum(dim=0)
                np.stack([gaussian_filter(m, sigma=4) for m in total.cpu().numpy()])

    return run


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


#: runtime row -> (int8 mode of the export it reads, the runtime name zsad takes)
ROWS = {"torch": (None, "torch"), "onnx": ("dynamic", "onnx"), "onnx-int8": ("dynamic", "onnx-int8"),
        "onnx-int8-static": ("static", "onnx-int8"), "openvino": ("static", "openvino"),
        "openvino-int8": ("static", "openvino-int8"), "official": (None, "official")}


def _fidelity(manifest, runtime: str) -> dict:
    """The export's own fidelity record for a row (see the module doc)."""
    if manifest is None:
        return {}
    if runtime in ("onnx", "openvino"):
        figures = manifest.fidelity.get("fp32" if runtime == "onnx" else "openvino") or {}
        return {"map_max_abs_diff": figures.get("map_max_abs_diff")}
    figures = (manifest.int8 or {}).get("openvino" if runtime == "openvino-int8" else "agreement") or {}
    return {"map_r_min": figures.get("pearson_min"), "auroc_delta": figures.get("auroc_delta"),
            "kept_fp32": (manifest.int8 or {}).get("excluded_roles")}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="ViT-B-16:random@224,ViT-L-14-336:random@518")
    parser.add_argument("--methods", default="clip,anomalyclip,musc")
    parser.add_argument("--threads", default="1,2", help="comma list (default 1,2)")
    parser.add_argument("--runtimes", default=",".join(ROWS), help=f"comma list of rows (default all: {', '.join(ROWS)})")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--check-images", type=int, default=2)
    parser.add_argument("--official-anomalyclip", default=None, metavar="DIR",
                        help="a checkout of zqhang/AnomalyCLIP: adds its test loop (row 'official', anomalyclip)")
    parser.add_argument("--json", default=None)
    # child mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("method", "setting", "runtime", "export", "adapter", "official"):
        parser.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--thread-count", dest="threads_one", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.threads = args.threads_one
        child(args)
        return

    from zsad.export.build import ExportRequest, export

    threads = sorted({int(t) for t in args.threads.split(",")})
    wanted = [r for r in args.runtimes.split(",") if r]
    rows = []
    with tempfile.TemporaryDirectory(prefix="zsad-bench-runtime-") as scratch:
        for setting in args.settings.split(","):
            backbone, size = setting.rsplit("@", 1)
            for method in args.methods.split(","):
                adapter = None
                if method == "anomalyclip":
                    adapter = _adapter(backbone, int(size), Path(scratch) / f"adapter-{len(rows)}")
                exports = {}
                for mode in sorted({ROWS[r][0] for r in wanted if ROWS[r][0]}):
                    folder = Path(scratch) / f"{method}-{mode}-{len(rows)}"
                    started = time.perf_counter()
                    load = _load()
                    manifest = export(ExportRequest(
                        method=method, backbone=backbone, out=folder, image_size=int(size), int8=True,
                        int8_mode=mode, force=True, check_images=args.check_images, threads=max(threads),
                        options={"adapter": adapter} if adapter else {}))
                    exports[mode] = (folder, manifest)
                    print(f"# exported {method} {setting} int8 {mode} in {time.perf_counter() - started:.0f} s "
                          f"(load {load}-{_load()}): fp32 {manifest.fidelity.get('fp32')}, openvino "
                          f"{manifest.fidelity.get('openvino')}, int8 {manifest.int8['agreement']} (openvino "
                          f"{manifest.int8.get('openvino')}) kept fp32 {manifest.int8['excluded_roles']}; runtimes "
                          f"{manifest.runtimes}", flush=True)
                for row in wanted:
                    mode, runtime = ROWS[row]
                    if row == "official" and (method != "anomalyclip" or not args.official_anomalyclip):
                        continue
                    folder, manifest = exports.get(mode, (None, None))
                    for n in threads:
                        cmd = [sys.executable, __file__, "--child", "--method", method, "--setting", setting,
                               "--runtime", runtime, "--thread-count", str(n), "--images", str(args.images),
                               "--reps", str(args.reps)]
                        cmd += ["--export", str(folder)] if folder else []
                        cmd += ["--adapter", adapter] if adapter else []
                        cmd += ["--official", args.official_anomalyclip] if row == "official" else []
                        env = {**os.environ, "OMP_NUM_THREADS": str(n)}
                        before = _load()
                        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                        if done.returncode:
                            print(f"# {method} {setting} {row} threads={n} failed:\n{done.stderr[-2000:]}",
                                  file=sys.stderr)
                            continue
                        result = json.loads(done.stdout.strip().splitlines()[-1])
                        entry = {"method": method, "setting": setting, "runtime": row, "threads": n, **result,
                                 "load_before": before, "load_after": _load(), **_fidelity(manifest, runtime)}
                        rows.append(entry)
                        print(f"{method:12s} {setting:24s} {row:17s} threads={n}: {entry['s_per_image']:.3f} "
                              f"s/image, peak {entry['peak_rss_mib']:.0f} MiB, load {before}-{entry['load_after']}, "
                              f"fidelity {_fidelity(manifest, runtime)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
