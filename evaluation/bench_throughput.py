"""Benchmark (not a test): images/s and peak memory of a method on synthetic images.

    python evaluation/bench_throughput.py --backbone ViT-L-14-336:random --image-size 518 --images 4
    python evaluation/bench_throughput.py --device cuda --precision fp16 --images 64 --batch-size 16

Text embeddings are computed before timing (they are cached per class name in real use). Peak memory is the
process's peak resident set (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA).
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="clip")
    parser.add_argument("--backbone", default="ViT-L-14-336:random")
    parser.add_argument("--image-size", type=int, default=518)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()

    import zsad
    from zsad.data.synthetic import make_sample

    rng = np.random.default_rng(0)
    images = [make_sample("carpet", "hole" if i % 2 else None, size=512, rng=rng).image for i in range(args.images)]
    detector = zsad.create(args.method, backbone=args.backbone, image_size=args.image_size, device=args.device,
                           precision=args.precision, batch_size=args.batch_size, warn_random=False)
    detector.score(images[:1])  # warm-up: first-call allocations
    if detector.method.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    detector.score(images)
    if detector.method.device.type == "cuda":
        torch.cuda.synchronize()
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (CUDA)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"
    seconds = time.perf_counter() - start
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if detector.method.device.type == "cuda":
        machine = torch.cuda.get_device_name()
    print("| method | backbone | size | device | precision | images | batch | images/s | s/image | peak memory | machine |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.method} | {args.backbone} | {args.image_size} | {args.device} | {args.precision} | {args.images} "
          f"| {args.batch_size} | {args.images / seconds:.3f} | {seconds / args.images:.2f} | {peak} | {machine} |")


if __name__ == "__main__":
    main()
