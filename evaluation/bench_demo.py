"""Benchmark (not a test): the web demo under a day's worth of visitors, in minutes: requests/s, latency and the
server's resident memory over time.

    python evaluation/bench_demo.py --backbone tiny-random --requests 200
    python evaluation/bench_demo.py --backbone ViT-B-16:random --image-size 224 --requests 200

Starts ``zsad demo`` on a free loopback port and sends ``--requests`` scoring requests from independent
``gradio_client`` visitors, ``--concurrency`` at a time. Visitor ``k`` uploads images of ``--sizes[k % len]`` pixels a
side and does, in turn: clip on one image; musc on six; clip on one image and then moves the threshold (a
``/rethreshold`` request, not counted in the latency); a bad upload beside a good image. Requests go in rounds of
``--every``; after each round, once the server is idle, its resident set (``/proc``) and ``/health`` are read (the
curve), and a thread samples the resident set every second while requests run (the peaks: a running request's
images and maps are transient). Printed: a Markdown summary (requests/s; p50/p95 latency of the scoring requests;
idle RSS after warm-up, its largest value after warm-up and at the end; the peak while running) and the curve.
``--csv`` writes every per-second sample. Warm-up is the first ``--warm-up`` requests (first model passes, gradio's
caches, the session store filling up to its cap).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MIB = 2**20


@dataclass
class Sample:
    seconds: float
    done: int
    rss: int
    health: dict = field(default_factory=dict)


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_images(folder: Path, sizes: list[int]) -> tuple[dict[int, list[str]], str]:
    from zsad.data.synthetic import make_sample

    images = {}
    for size in sizes:
        images[size] = []
        for i in range(6):
            path = folder / f"part_{size}_{i}.png"
            make_sample("weave", "hole" if i % 2 else None, size=size, rng=np.random.default_rng(i)).image.save(path)
            images[size].append(str(path))
    bad = folder / "bad.png"
    bad.write_bytes(b"not an image")
    return images, str(bad)


def start_server(args: argparse.Namespace, port: int, work: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "zsad", "demo", "--backbone", args.backbone, "--image-size",
               str(args.image_size), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
               "--max-sessions", str(args.max_sessions)]
    if args.max_memory_gb:
        command += ["--max-memory-gb", str(args.max_memory_gb)]
    log = open(work / "server.log", "wb")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "TMPDIR": str(work)}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise SystemExit(f"zsad demo exited: {(work / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise SystemExit("zsad demo did not start within 300 s") from None
            time.sleep(0.5)


def visit(url: str, k: int, images: dict[int, list[str]], bad: str, sizes: list[int]) -> tuple[str, float]:
    """One visitor's scoring request; returns ("ok" or the message, seconds of the scoring request)."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)
    paths = images[sizes[k % len(sizes)]]
    kind = (k // len(sizes)) % 4
    started = time.perf_counter()
    try:
        if kind == 1:
            client.predict([handle_file(p) for p in paths], [], "fabric", "musc", None, 0.5, api_name="/score")
        elif kind == 3:
            client.predict([handle_file(bad), handle_file(paths[0])], [], "", "clip", None, 0.5, api_name="/score")
        else:
            client.predict([handle_file(paths[k % 6])], [], "fabric", "clip", None, 0.5, api_name="/score")
        seconds = time.perf_counter() - started
        if kind == 2:
            client.predict(0.3, api_name="/rethreshold")
        return "ok", seconds
    except Exception as exc:  # an answer with a message (refused, expired) or a failure: reported, not raised
        return f"{type(exc).__name__}: {exc}", time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-random")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--max-sessions", type=int, default=64)
    parser.add_argument("--max-memory-gb", type=float, default=None)
    parser.add_argument("--warm-up", type=int, default=40)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--csv", default=None, help="write every RSS sample here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        work = Path(tmp)
        images, bad = make_images(work, args.sizes)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        process = start_server(args, port, work)
        samples: list[Sample] = []
        done = [0]
        stop = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.wait(1.0):
                try:
                    with urllib.request.urlopen(url + "health", timeout=5) as response:
                        health = json.loads(response.read())
                except OSError:
                    health = {}
                samples.append(Sample(time.monotonic() - t0, done[0], rss_of(process.pid), health))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results: list[tuple[str, float]] = []
        curve: list[tuple[int, int, int, dict]] = [(0, rss_of(process.pid), rss_of(process.pid), {})]
        lock = threading.Lock()

        def one(k: int) -> None:
            outcome = visit(url, k, images, bad, args.sizes)
            with lock:
                results.append(outcome)
                done[0] += 1

        try:
            busy = 0.0  # seconds with requests running (the idle pauses between rounds are left out)
            with ThreadPoolExecutor(args.concurrency) as pool:
                for first in range(0, args.requests, args.every):
                    round_start = time.monotonic()
                    list(pool.map(one, range(first, min(first + args.every, args.requests))))
                    busy += time.monotonic() - round_start
                    time.sleep(1.5)  # idle: what the server holds between visitors
                    peak = max([s.rss for s in samples if s.seconds >= round_start - t0] or [0])
                    with urllib.request.urlopen(url + "health", timeout=5) as response:
                        health = json.loads(response.read())
                    curve.append((done[0], rss_of(process.pid), peak, health))
            wall = busy
        finally:
            stop.set()
            process.terminate()
            process.wait(timeout=30)
        if args.csv:
            with open(args.csv, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["seconds", "requests_done", "rss_mib", "sessions", "kept_mb", "running", "waiting",
                                 "queued"])
                for s in samples:
                    writer.writerow([f"{s.seconds:.1f}", s.done, f"{s.rss / MIB:.1f}", s.health.get("sessions"),
                                     s.health.get("kept_mb"), s.health.get("running"), s.health.get("waiting"),
                                     s.health.get("queued")])

    ok = [seconds for answer, seconds in results if answer == "ok"]
    failed = [answer for answer, _ in results if answer != "ok"]
    warm = next((point for point in curve if point[0] >= args.warm_up), curve[-1])
    after = [point for point in curve if point[0] >= warm[0]]
    end, health = curve[-1][1], curve[-1][3]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    p50, p95 = np.percentile(ok, [50, 95]) if ok else (float("nan"), float("nan"))
    print("| backbone | size | uploads px | requests | not ok | requests/s | p50 s | p95 s | idle RSS after warm-up "
          "MiB | largest idle after MiB | end MiB | growth MiB | peak running MiB | sessions (cap) | machine |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.backbone} | {args.image_size} | {' + '.join(f'{n}²' for n in args.sizes)} | {len(results)} | "
          f"{len(failed)} | {len(results) / wall:.2f} | {p50:.2f} | {p95:.2f} | {warm[1] / MIB:.0f} | "
          f"{max(p[1] for p in after) / MIB:.0f} | {end / MIB:.0f} | {(end - warm[1]) / MIB:+.0f} | "
          f"{max(p[2] for p in curve) / MIB:.0f} | {health.get('sessions')} ({args.max_sessions}) | {machine} |")
    print()
    print("| requests done | " + " | ".join(str(p[0]) for p in curve) + " |")
    print("|---|" + "---|" * len(curve))
    print("| idle RSS MiB | " + " | ".join(f"{p[1] / MIB:.0f}" for p in curve) + " |")
    print("| peak RSS in round MiB | " + " | ".join(f"{p[2] / MIB:.0f}" for p in curve) + " |")
    print("| sessions kept MB | " + " | ".join(str(p[3].get("kept_mb", "")) for p in curve) + " |")
    for answer in sorted(set(failed))[:5]:
        print(f"not ok: {answer[:200]}")


if __name__ == "__main__":
    main()
