"""Cost of AUPIMO against AUPRO and the pooled pixel metrics on one category-sized input.

Usage::

    python evaluation/bench_aupimo.py                       # 100 images at 1024 x 1024, half of them normal
    python evaluation/bench_aupimo.py --images 40 --size 512 --repeat 3

Maps are smoothed noise with brighter rectangular defects (the metrics' cost depends on the pixel count, not on
the maps' content). Each metric runs ``--repeat`` times on the same lists; the table gives the best wall time and
the peak of new Python-tracked memory (numpy reports its buffers to ``tracemalloc``) beyond the inputs.
"""

from __future__ import annotations

import argparse
import platform
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from scipy.ndimage import gaussian_filter

from zsad.metrics import aupimo, aupro, pixel_metrics


def make_maps(n_images: int, size: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n_images):
        mask = np.zeros((size, size), dtype=bool)
        if i % 2:
            for _ in range(int(rng.integers(1, 4))):
                y, x = rng.integers(0, size - size // 8, 2)
                mask[y : y + rng.integers(size // 64, size // 8), x : x + rng.integers(size // 64, size // 8)] = True
        noise = gaussian_filter(rng.standard_normal((size // 8, size // 8)).astype(np.float32), 1.0)
        amap = np.kron(noise, np.ones((8, 8), np.float32)) + rng.standard_normal((size, size), np.float32) * 0.1
        maps.append((amap + mask * np.float32(rng.uniform(0.2, 1.0))).astype(np.float32))
        masks.append(mask)
    return maps, masks


def measure(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best wall time (s) and peak traced memory (MiB) of ``fn`` over ``repeat`` runs."""
    best, peak = float("inf"), 0.0
    for _ in range(repeat):
        tracemalloc.start()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        peak = max(peak, tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    return best, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    maps, masks = make_maps(args.images, args.size)
    n_pixels = args.images * args.size**2
    print(f"{args.images} images of {args.size}x{args.size} ({n_pixels / 1e6:.0f} M pixels, "
          f"{sum(not m.any() for m in masks)} normal); {platform.processor() or platform.machine()}")
    jobs: dict[str, Callable[[], object]] = {
        "aupimo (1e-5, 1e-4)": lambda: aupimo(maps, masks),
        "aupro mvtec (0.3)": lambda: aupro(maps, masks, variant="mvtec"),
        "aupro cflow (0.3)": lambda: aupro(maps, masks, variant="cflow"),
        "pixel auroc/ap/f1": lambda: pixel_metrics(maps, masks),
    }
    print("| metric | best s | peak extra MiB |\n|---|---|---|")
    for name, job in jobs.items():
        seconds, peak = measure(job, args.repeat)
        print(f"| {name} | {seconds:.2f} | {peak:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
