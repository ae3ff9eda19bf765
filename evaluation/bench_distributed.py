"""Scaling with processes: clip images/s and MuSc mutual-scoring seconds, 1 process vs N ranks (torchrun, gloo).

    python evaluation/bench_distributed.py [--backbone ViT-B-16:random] [--image-size 224] [--images 32]
                                           [--msm-images 48] [--processes 2] [--threads 2] [--device cpu]

On a CPU the comparison is fair only at equal cores: one process with ``--threads`` threads against
``--processes`` ranks with ``threads / processes`` threads each. Each configuration runs in fresh processes;
timings exclude start-up and model loading (one warm-up batch first), and a rank's time is the slowest rank's.
MSM is timed on random unit features of ViT-L/14 @518 shape per image (L = 1369 patches, C = 1024), one (r, layer)
pass, so it measures the pair products and the communication, not the backbone. On a machine with GPUs pass
``--device cuda`` (NCCL; one GPU per rank).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def worker(args: argparse.Namespace) -> None:
    """One rank (or the single process): time clip scoring of a folder and one MSM pass."""
    import torch

    import zsad
    from zsad.data.synthetic import make_sample
    from zsad.distributed import from_env, rank_device
    from zsad.methods.base import Share
    from zsad.methods.musc.msm import musc_patch_scores
    from zsad.runner import as_sources

    dist = from_env(args.device)
    device = rank_device(args.device, dist)
    import numpy as np

    rng = np.random.default_rng(0)
    images = [make_sample("grain", None, size=args.image_size, rng=rng).image for _ in range(args.images)]
    detector = zsad.create("clip", backbone=args.backbone, image_size=args.image_size, device=device,
                           batch_size=args.batch_size, warn_random=False)
    runner = detector.runner()
    list(runner.run(as_sources(images[: args.batch_size])))  # warm-up
    dist.barrier()
    started = time.perf_counter()
    count = sum(1 for _ in runner.run(as_sources(images), dist=dist))
    clip_seconds = max(dist.all_gather_object(time.perf_counter() - started))
    counts = dist.all_gather_object(count)

    n, length, channels = args.msm_images, 1369, 1024
    mine = range(n)[slice(n * dist.rank // dist.world_size, n * (dist.rank + 1) // dist.world_size)]
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randn(n, length, channels, generator=generator)[mine.start:mine.stop]
    share = Share(dist, tuple(dist.all_gather_object(len(mine)))) if dist.active else None
    dist.barrier()
    started = time.perf_counter()
    musc_patch_scores([tokens], rs=(1,), block=8, device=device, comm=share.comm if share else None,
                      counts=share.counts if share else None)
    msm_seconds = max(dist.all_gather_object(time.perf_counter() - started))
    if dist.is_main:
        print(json.dumps({"clip_images": sum(counts), "clip_seconds": clip_seconds,
                          "clip_images_per_s": sum(counts) / clip_seconds, "msm_images": n,
                          "msm_seconds": msm_seconds, "threads": torch.get_num_threads()}))
    dist.close()


def run(processes: int, threads: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    forwarded = ["--worker", "--backbone", args.backbone, "--image-size", str(args.image_size), "--images",
                 str(args.images), "--msm-images", str(args.msm_images), "--device", args.device, "--batch-size",
                 str(args.batch_size)]
    if processes == 1:
        cmd = [sys.executable, __file__, *forwarded]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               __file__, *forwarded]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="ViT-B-16:random")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--msm-images", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="total threads (cores) of each configuration")
    p.add_argument("--device", default="cpu")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    one = run(1, args.threads, args)
    many = run(args.processes, max(1, args.threads // args.processes), args)
    report = {
        "machine": f"{os.cpu_count()} CPUs" if args.device == "cpu" else args.device,
        "backbone": args.backbone, "image_size": args.image_size,
        "one_process": one, f"{args.processes}_processes": many,
        "clip_speedup": many["clip_images_per_s"] / one["clip_images_per_s"],
        "msm_speedup": one["msm_seconds"] / many["msm_seconds"],
    }
    report["clip_efficiency"] = report["clip_speedup"] / args.processes
    report["msm_efficiency"] = report["msm_speedup"] / args.processes
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
