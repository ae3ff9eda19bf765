"""Benchmark: exact tiled MSM (``mutual_scores``) against the per-query cdist version (``mutual_scores_reference``).

Usage::

    python evaluation/bench_musc.py [--n 8 16 32 64] [--L 1369] [--C 1024] [--block 8] [--device cpu] [--repeat 1]

For every N and implementation a fresh subprocess builds the same random unit Z ``[N, L, C]`` (seeded), runs the
implementation ``--repeat`` times and reports the fastest wall time and the peak extra memory of the first run;
the parent compares the two outputs (max abs difference) and prints a Markdown table. Use ``--repeat`` > 1 on
shared machines: other processes only ever make a run slower.

Peak extra memory:
    * CPU: after Z is built and a warm-up on 2 images ran, the kernel's RSS high-water mark is reset (write "5" to
      /proc/self/clear_refs, Linux >= 4.0); extra = VmHWM after the run - VmRSS before it. Where clear_refs cannot
      be written, a thread samples VmRSS every 2 ms (may miss short peaks; the table says which method was used).
    * CUDA: torch.cuda.max_memory_allocated() - memory_allocated() before the run (after reset_peak_memory_stats).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from zsad.methods.musc import mutual_scores, mutual_scores_reference

logger = logging.getLogger("bench_musc")

_IMPLS = ("reference", "fast")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class _PeakRss:
    """Peak RSS growth over a code region (KiB), via VmHWM reset or, failing that, a sampling thread."""

    def __init__(self) -> None:
        self.method = "VmHWM"
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.base = _status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.method = "RSS sampling"
            self.peak = self.base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kib("VmRSS"))
            time.sleep(0.002)

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _status_kib("VmRSS"))
        else:
            self.peak = _status_kib("VmHWM")

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.base) / 1024.0


def _make_z(n: int, length: int, channels: int, device: torch.device, seed: int) -> torch.Tensor:
    """Random unit vectors ``[N, L, C]`` fp32, built in place (no second copy)."""
    z = torch.empty(n, length, channels, device=device)
    z.normal_(generator=torch.Generator(device=device).manual_seed(seed))
    z /= z.norm(dim=-1, keepdim=True)
    return z


def _run_one(impl: str, args: argparse.Namespace, n: int, out_path: str) -> dict[str, object]:
    device = torch.device(args.device)
    z = _make_z(n, args.L, args.C, device, args.seed)

    def call(zz: torch.Tensor) -> torch.Tensor:
        if impl == "fast":
            return mutual_scores(zz, args.top_fraction, block=args.block)
        return mutual_scores_reference(zz, args.top_fraction)

    call(z[:2])  # warm-up at full size: thread pools, kernels, cdist/GEMM code paths
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        scores = call(z)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        extra = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        method = "cuda max_memory_allocated"
    else:
        rss = _PeakRss()
        rss.start()
        t0 = time.perf_counter()
        scores = call(z)
        seconds = time.perf_counter() - t0
        rss.stop()
        extra = rss.extra_mib
        method = rss.method
    for _ in range(args.repeat - 1):
        t0 = time.perf_counter()
        call(z)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = min(seconds, time.perf_counter() - t0)
    torch.save(scores.cpu(), out_path)
    return {"seconds": seconds, "extra_mib": extra, "method": method}


def _spawn(impl: str, args: argparse.Namespace, n: int, out_path: str) -> dict[str, object]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        "--n",
        str(n),
        "--L",
        str(args.L),
        "--C",
        str(args.C),
        "--block",
        str(args.block),
        "--device",
        args.device,
        "--seed",
        str(args.seed),
        "--top-fraction",
        str(args.top_fraction),
        "--repeat",
        str(args.repeat),
        "--out",
        out_path,
    ]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--L", type=int, default=1369)
    parser.add_argument("--C", type=int, default=1024)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-fraction", type=float, default=0.3)
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the fastest is reported")
    parser.add_argument("--worker", choices=_IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        print(json.dumps(_run_one(args.worker, args, args.n[0], args.out)))
        return

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logger.info(
        "MSM benchmark: L=%d C=%d block=%d device=%s torch threads=%d",
        args.L,
        args.C,
        args.block,
        args.device,
        torch.get_num_threads(),
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            res = {}
            for impl in _IMPLS:
                res[impl] = _spawn(impl, args, n, os.path.join(tmp, f"{impl}_{n}.pt"))
                logger.info("N=%d %s: %.2f s, +%.0f MiB", n, impl, res[impl]["seconds"], res[impl]["extra_mib"])
            diff = (
                (torch.load(os.path.join(tmp, f"fast_{n}.pt")) - torch.load(os.path.join(tmp, f"reference_{n}.pt")))
                .abs()
                .max()
                .item()
            )
            rows.append((n, res, diff))
    method = rows[0][1]["fast"]["method"]
    print(
        f"\nMSM, L={args.L}, C={args.C}, block={args.block}, device={args.device}, fp32, "
        f"{torch.get_num_threads()} threads, best of {args.repeat}; memory: {method}\n"
    )
    print("| N | reference s | fast s | speed-up | reference peak extra MiB | fast peak extra MiB | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for n, res, diff in rows:
        ref, fast = res["reference"], res["fast"]
        print(
            f"| {n} | {ref['seconds']:.2f} | {fast['seconds']:.2f} | {ref['seconds'] / fast['seconds']:.2f}x "
            f"| {ref['extra_mib']:.0f} | {fast['extra_mib']:.0f} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
