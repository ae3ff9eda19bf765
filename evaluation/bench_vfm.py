"""``vfm`` on CPU: seconds per image and peak memory of zsad (PyTorch fp32, ONNX Runtime fp32 and int8) beside the
official AnomalyVFM test loop, and the time of one training micro-batch of each, in one session.

    python evaluation/bench_vfm.py --official PATH [--size 768] [--images 2] [--reps 1] [--threads 2]
                                   [--train-size 256] [--train-batch 2] [--json out.json]
                                   [--runtimes official,torch,torch-blas] [--rounds 3] [--profile]

``--official``: a checkout of MaticFuc/AnomalyVFM. Weights are random (speed does not depend on their values):
``radio:v2.5-l:random`` with random adapters (rank 64) for zsad; for the official code its ``RADIOModel`` (ViT-L/16,
``radio_local.py``) with ``add_peft(..., DoRA, rank 64)``, ``SimpleDecoder(1024, 1, 1)`` and ``SimplePredictor(3072)``.

Each configuration runs in a fresh process (peak memory = the child's VmHWM, model build included): one warm-up
image, then ``--reps`` passes over ``--images`` synthetic images at batch 1, the median pass per image.
- official: ``test.py``'s ``test_category`` body per batch, on CPU in fp32 (its autocast is CUDA's): the
  torchvision transform, backbone with the DoRA wrappers (which recompute their weights every forward), decoder,
  head, sigmoid, the 5 x 5 filter; no metrics.
- torch / onnx / onnx-int8: ``zsad.create("vfm", ...)`` and ``detector.score`` (decode, resize, map to the
  image's size and the decision included). The export (fp32 + int8, fidelity measured) is made once first.
  torch-blas: zsad with ``onednn=False`` (the backbone's linears through ``F.linear``, as before oneDNN).
- ``--rounds N``: the runtimes N times round-robin (official, zsad, official, ...), so a shared machine's load
  falls on both alike; each row records the 1-minute load average before and after it.
- ``--profile``: instead, ``torch.profiler`` over one zsad forward (``method(x)``, preprocessed input) at
  ``--size``, with and without oneDNN: the op table and the share of time in the linear layers' products.
- train-official / train-zsad: one micro-batch forward + backward of the training loss at ``--train-size``
  (``train.py``'s loop body; zsad's ``VfmTrainer.step``), ``--train-batch`` images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKBONE = "radio:v2.5-l:random"


def _images(n: int, size: int):
    import numpy as np

    from zsad.data.synthetic import make_sample

    rng = np.random.default_rng(0)
    return [make_sample("weave", "hole", size=(size + 37, size - 21), rng=rng).image for _ in range(n)]


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _official(path: Path, size: int):
    """The official model as ``test.py`` builds it (random weights), on CPU."""
    import torch

    sys.path.insert(0, str(path))
    from decoder import SimpleDecoder, SimplePredictor
    from models.radio import RADIO
    from peft_local.peft_wrapper import PeftType

    model = RADIO(height=size, use_local=True)
    model.add_peft(64, peft_type=PeftType.DORA)
    with torch.no_grad():  # non-zero adapters, as a trained model has
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model, SimpleDecoder(model.feature_dim, 1, 1), SimplePredictor(3 * model.feature_dim)


def _time(fn, images, reps: int) -> list[float]:
    fn(images[:1])  # warm-up
    passes = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(images)
        passes.append((time.perf_counter() - start) / len(images))
    return passes


def child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    if args.runtime.startswith("train"):
        return {"s_per_step": _train(args), "peak_rss_mib": _peak_mib()}
    images = _images(args.images, args.size)
    if args.runtime == "official":
        import torch.nn as nn
        import torch.nn.functional as F

        model, decoder, predictor = (m.eval() for m in _official(Path(args.official), args.size))
        transform = model.get_img_transform()
        pool = nn.AvgPool2d((5, 5), 1, 2)
        grid = args.size // model.patch_size

        @torch.no_grad()
        def score(batch):
            for img in batch:  # test.py's loop body, batch 1
                x = transform(img.convert("RGB")).unsqueeze(0)
                summary, ftrs = model(x)
                mask, _ = decoder(ftrs.permute(0, 2, 1).reshape(1, -1, grid, grid))
                predictor(summary).squeeze().sigmoid()
                pool(F.interpolate(mask.sigmoid(), (2 * grid, 2 * grid)).squeeze(1))
    else:
        import zsad

        if args.runtime in ("torch", "torch-blas"):
            detector = zsad.create("vfm", backbone=BACKBONE, image_size=args.size, device="cpu", precision="fp32",
                                   batch_size=1, warn_random=False, onednn=args.runtime == "torch")
        else:
            detector = zsad.create("vfm", backbone=BACKBONE, image_size=args.size, batch_size=1, runtime=args.runtime,
                                   export=args.export)
        score = detector.score
    passes = _time(score, images, args.reps)
    return {"s_per_image": statistics.median(passes), "passes": passes, "peak_rss_mib": _peak_mib()}


def _train(args: argparse.Namespace) -> float:
    """Seconds of one micro-batch forward + backward of the training loss (after one warm-up)."""
    import torch

    size, batch = args.train_size, args.train_batch
    images = torch.rand(batch, 3, size, size)
    masks = (torch.rand(batch, 1, size // 8, size // 8) > 0.9).float()
    labels = torch.tensor([float(i % 2) for i in range(batch)])
    if args.runtime == "train-official":
        import torchvision

        model, decoder, predictor = _official(Path(args.official), size)
        for name, p in model.named_parameters():  # train.py: freeze, then add_peft (only the adapters train)
            p.requires_grad_(any(k in name for k in ("lora_", "mag_", "magnitude")))
        opt = torch.optim.AdamW([*model.parameters(), *decoder.parameters(), *predictor.parameters()], lr=1e-4,
                                weight_decay=1e-2)
        grid = size // 16

        def step():
            summary, ftrs = model(images)
            mask, c = decoder(ftrs.permute(0, 2, 1).reshape(-1, 1024, grid, grid))
            score = predictor(summary).squeeze(1)
            l_img = torchvision.ops.sigmoid_focal_loss(score, labels, reduction="mean")
            inner = 5 * torchvision.ops.sigmoid_focal_loss(mask, masks, reduction="none") \
                + (mask.sigmoid().clip(0.1, 0.9) - masks).abs()
            c = 1 + c.exp()
            loss = (l_img + (c * inner - 0.1 * c.log()).mean()) / 4
            loss.backward()
            opt.step()
            opt.zero_grad()
    else:
        from zsad.backbones import load_backbone
        from zsad.methods.vfm.adapter import VfmModules, VfmSettings
        from zsad.methods.vfm.train import VfmTrainer

        backbone = load_backbone(BACKBONE, image_size=size, warn_random=False)
        modules = VfmModules(VfmSettings.for_backbone(backbone))
        modules.dora.reset_magnitudes(backbone)
        trainer = VfmTrainer(backbone, modules, lr=1e-4, weight_decay=1e-2)

        def step():
            trainer.step([(images, masks, labels)], 4)

    step()
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def profile(size: int, threads: int) -> None:
    """Where one zsad forward's time goes, with oneDNN linears and with ``F.linear``."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    import zsad

    torch.set_num_threads(threads)
    x = torch.rand(1, 3, size, size)
    for onednn in (True, False):
        method = zsad.create("vfm", backbone=BACKBONE, image_size=size, device="cpu", precision="fp32",
                             warn_random=False, onednn=onednn).method
        with torch.inference_mode():
            method(x)
            start = time.perf_counter()
            method(x)
            wall = time.perf_counter() - start
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                method(x)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        linear = sum(e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "mkldnn::_linear_pointwise",
                                                                          "aten::mm"))
        print(f"# onednn={onednn}: forward {wall:.2f} s at {size} px, {threads} threads, load "
              f"{os.getloadavg()[0]:.2f}; linear layers' products {100 * linear / total:.1f} % of the profiled time")
        print(events.table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", required=True)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--runtimes", default="official,torch,onnx,onnx-int8,train-official,train-zsad")
    parser.add_argument("--json", default=None)
    parser.add_argument("--rounds", type=int, default=1, help="the runtimes this many times, round-robin")
    parser.add_argument("--profile", action="store_true", help="profile one zsad forward instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--export", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.profile:
        profile(args.size, args.threads)
        return
    runtimes = args.runtimes.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="zsad-bench-vfm-") as scratch:
        export = Path(scratch) / "export"
        if any(r.startswith("onnx") for r in runtimes):
            from zsad.export.build import ExportRequest
            from zsad.export.build import export as make_export

            started = time.perf_counter()
            manifest = make_export(ExportRequest(method="vfm", backbone=BACKBONE, out=export, image_size=args.size,
                                                 int8=True, force=True, check_images=2))
            print(f"# export {time.perf_counter() - started:.0f} s: fp32 {manifest.fidelity['fp32']}, int8 "
                  f"{manifest.int8['agreement']} kept fp32 {manifest.int8['excluded_roles']}", flush=True)
            rows.append({"export": manifest.fidelity, "int8": manifest.int8})
        for runtime in runtimes * args.rounds:
            load_before = os.getloadavg()[0]
            cmd = [sys.executable, __file__, "--child", "--official", args.official, "--runtime", runtime, "--export",
                   str(export), "--size", str(args.size), "--images", str(args.images), "--reps", str(args.reps),
                   "--threads", str(args.threads), "--train-size", str(args.train_size),
                   "--train-batch", str(args.train_batch)]
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if done.returncode:
                print(f"{runtime}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"runtime": runtime, "threads": args.threads, "size": args.size, **result,
                         "load": [round(load_before, 2), round(os.getloadavg()[0], 2)]})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
