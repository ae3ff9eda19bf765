"""Reference-guided scoring: images/s and peak memory against the number of references.

    python evaluation/bench_reference.py                                   # the issue's setting (slow on a CPU)
    python evaluation/bench_reference.py --backbones ViT-B-16:random timm:vit_small_patch14_dinov2.lvd142m:random \
        --image-size 224 --shots 1 4 16 64 --test-images 4

Each (backbone, K) runs in a fresh process (so peak memory is its own): K synthetic good "grain" textures are the
references, then ``--test-images`` single images are scored one at a time (bank mode). Reported: seconds to build
the bank (forward passes, LNAMD, leave-one-out calibration), scoring images/s (backbone + search), the search alone
per image, the bank's bytes (and per reference), and the peak memory (CUDA: ``max_memory_allocated``; CPU: the
process's peak resident set).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

DEFAULT_BACKBONES = ("ViT-L-14-336:random", "timm:vit_large_patch14_dinov2.lvd142m:random")


def one(backbone: str, shots: int, image_size: int, test_images: int, device: str) -> dict:
    import numpy as np
    import torch

    import zsad
    from zsad.data.synthetic import make_sample

    rng = np.random.default_rng(0)
    refs = [make_sample("grain", None, size=image_size, rng=rng).image for _ in range(shots)]
    tests = [make_sample("grain", "hole", size=image_size, rng=rng).image for _ in range(test_images)]
    if torch.cuda.is_available() and device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    detector = zsad.create("clip", backbone=backbone, image_size=image_size, device=device, warn_random=False,
                           references=refs)
    built = time.perf_counter() - started
    method = detector.method
    detector.score(tests[:1])  # warm-up
    started = time.perf_counter()
    for image in tests:
        detector.score([image])
    seconds = time.perf_counter() - started
    feats = method.extract(detector.backbone.preprocess(tests[:1]))
    started = time.perf_counter()
    method._bank_patch_scores(feats)
    search = time.perf_counter() - started
    cuda = method.device.type == "cuda"
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"backbone": backbone, "shots": shots, "image_size": image_size, "device": str(method.device),
            "build_s": built, "images_per_s": test_images / seconds, "search_s_per_image": search,
            "bank_mb": method.bank_bytes / 2**20, "bank_mb_per_reference": method.bank_bytes / shots / 2**20,
            "peak_mb": peak / 2**20, "peak_kind": "cuda allocated" if cuda else "process RSS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES))
    parser.add_argument("--image-size", type=int, default=518)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--test-images", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--one", nargs=2, metavar=("BACKBONE", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.image_size, args.test_images, args.device)))
        return
    print("| backbone | size | K | device | build s | images/s | search s/img | bank MB | MB/ref | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for backbone in args.backbones:
        for shots in args.shots:
            cmd = [sys.executable, __file__, "--one", backbone, str(shots), "--image-size", str(args.image_size),
                   "--test-images", str(args.test_images), "--device", args.device]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {backbone} | {r['image_size']} | {shots} | {r['device']} | {r['build_s']:.1f} | "
                  f"{r['images_per_s']:.2f} | {r['search_s_per_image']:.3f} | {r['bank_mb']:.1f} | "
                  f"{r['bank_mb_per_reference']:.2f} | {r['peak_mb']:.0f} ({r['peak_kind']}) |", flush=True)


if __name__ == "__main__":
    main()
