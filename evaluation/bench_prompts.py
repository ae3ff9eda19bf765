"""Benchmark (not a test): AnomalyCLIP prompt training-step time and ``anomalyclip`` inference images/s.

    python evaluation/bench_prompts.py                                   # tiny-random, 518 px, CPU fp32
    python evaluation/bench_prompts.py --backbone ViT-L-14-336:random --device cuda --steps 20 --images 64

Training: ``--steps`` steps of one synthetic batch (random images, rectangle masks) after one warm-up step;
the median step time is reported (forward through the frozen backbone, deep-prompt text tower, losses,
backward to the prompts, Adam). Inference: an adapter with freshly initialised prompts is saved to a temporary
folder and loaded through ``zsad.create("anomalyclip", adapter=...)``; images are synthetic 512 px renders.
Peak memory is the process's peak RSS (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import tempfile
import time

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-random")
    parser.add_argument("--image-size", type=int, default=518)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--taps", default="last")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()

    import zsad
    from zsad.backbones import load_backbone
    from zsad.data.synthetic import make_sample
    from zsad.device import resolve_device, resolve_precision
    from zsad.methods.anomalyclip.adapter import PromptSettings, save_prompt_adapter
    from zsad.methods.anomalyclip.forward import resolve_dpam_layers, resolve_taps
    from zsad.methods.anomalyclip.prompts import PromptLearner, resolve_shape, text_width
    from zsad.methods.anomalyclip.train import PromptTrainer

    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    backbone = load_backbone(args.backbone, image_size=args.image_size, device=device, pos_interpolation="bilinear",
                             warn_random=False)
    taps = resolve_taps(backbone, args.taps)
    dpam = resolve_dpam_layers(backbone, None)
    shape = resolve_shape(backbone)
    torch.manual_seed(0)
    learner = PromptLearner(shape, text_width(backbone))
    trainer = PromptTrainer(backbone, learner, taps=taps, dpam_layers=dpam, local_weight=4.0 if len(taps) == 1 else 1.0,
                            dtype=dtype)

    size, batch = args.image_size, args.batch_size
    images = torch.randn(batch, 3, size, size)
    masks = torch.zeros(batch, size, size)
    masks[1::2, size // 4: size // 2, size // 3: size // 2] = 1
    labels = torch.tensor([i % 2 for i in range(batch)])
    trainer.step(images, masks, labels)  # warm-up
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        trainer.step(images, masks, labels)
        _sync(device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    train_peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)

    rng = np.random.default_rng(0)
    pil = [make_sample("carpet", "hole" if i % 2 else None, size=512, rng=rng).image for i in range(args.images)]
    with tempfile.TemporaryDirectory() as folder:
        settings = PromptSettings(backbone=args.backbone, image_size=size, taps=tuple(taps), dpam_layers=dpam,
                                  shape=shape, local_weight=4.0)
        save_prompt_adapter(folder, learner, settings)
        detector = zsad.create("anomalyclip", adapter=folder, backbone=args.backbone, image_size=size,
                               device=args.device, precision=args.precision, batch_size=batch, warn_random=False)
        detector.score(pil[:1])  # warm-up
        _sync(device)
        start = time.perf_counter()
        detector.score(pil)
        _sync(device)
        infer_s = time.perf_counter() - start

    machine = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    memory = "GiB CUDA" if device.type == "cuda" else "GiB RSS"
    print("| backbone | size | device | precision | taps | batch | train s/step | train images/s | "
          f"train peak ({memory}) | inference images | inference images/s | machine |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.backbone} | {size} | {args.device} | {args.precision} | {','.join(map(str, taps))} | {batch} "
          f"| {step_s:.3f} | {batch / step_s:.2f} | {train_peak:.2f} | {args.images} | {args.images / infer_s:.2f} "
          f"| {machine} |")


if __name__ == "__main__":
    main()
