"""``zsad train-vfm``: train AnomalyVFM's adapters, decoder and head into an adapter folder (``--method vfm``).

    zsad train-vfm --data ROOT --out adapters/NAME [--backbone radio:v2.5-l] [--image-size 768] [--steps N] [--resume]

Under ``torchrun --nproc-per-node N zsad train-vfm ...`` (or ``accelerate launch``) each step's micro-batches are
dealt to the processes; the step is the official one (32 images) whatever N.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zsad.cli.options import parse_categories, warn_random_weights


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from zsad.data.datasets import FORMATS
    from zsad.methods.vfm.train import VfmTrainConfig

    d = VfmTrainConfig(data=Path("."), out=Path("."))
    p = sub.add_parser("train-vfm", help="train AnomalyVFM (--method vfm) on images with masks (an adapter folder)")
    p.add_argument("--data", required=True, metavar="ROOT",
                   help="labelled images with masks, normal and anomalous (e.g. `zsad make-synthetic ROOT`, or the "
                        "released AnomalyVFM synthetic set in MVTec layout)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="dataset layout (default auto)")
    p.add_argument("--split", default=d.split, choices=["all", "train", "test"],
                   help="split(s) to train on (default all: train and test)")
    p.add_argument("--categories", default=None, help="comma-separated categories (default: all)")
    p.add_argument("--out", required=True, metavar="DIR", help="adapter folder to write, e.g. adapters/vfm-radio")
    p.add_argument("--backbone", default=d.backbone, help=f"backbone (default {d.backbone}, the published one)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size (default the family's official one: 768 for RADIO and DINOv3, 672 for DINOv2 and CLIP)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimiser steps (default the family's official ones: 200 for RADIO, 500 otherwise)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per step (default {d.batch_size})")
    p.add_argument("--accumulation", type=int, default=d.accumulation,
                   help=f"micro-batches per step (default {d.accumulation}: {d.micro_batch} images each)")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr:g})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"default {d.weight_decay:g}")
    p.add_argument("--rank", type=int, default=d.rank, help=f"DoRA rank (default {d.rank})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--save-every", type=int, default=d.save_every,
                   help=f"write the adapter and the resume state every N steps (default {d.save_every})")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--precision", default=d.precision, choices=["auto", "fp32", "fp16", "bf16"],
                   help="precision of the forward (default fp32, as the official training)")
    p.add_argument("--workers", type=int, default=2, help="image-loading worker processes (default 2)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder for weights")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from zsad.backbones.names import parse_backbone_name
    from zsad.cli.options import process_group
    from zsad.distributed import rank_device
    from zsad.methods.vfm.train import VfmTrainConfig, train_vfm

    with process_group(args) as dist:
        if dist.is_main:
            warn_random_weights(parse_backbone_name(args.backbone), args.backbone, "the trained adapter is meaningless")
        config = VfmTrainConfig(
            data=Path(args.data), out=Path(args.out), format=args.format, split=args.split,
            categories=parse_categories(args.categories), backbone=args.backbone, image_size=args.image_size,
            steps=args.steps, batch_size=args.batch_size, accumulation=args.accumulation, lr=args.lr,
            weight_decay=args.weight_decay, rank=args.rank, seed=args.seed, save_every=args.save_every,
            device=rank_device(args.device, dist), precision=args.precision, workers=args.workers,
            resume=args.resume, progress=not args.quiet, cache_dir=args.cache_dir)
        out = train_vfm(config, dist)
        if dist.is_main:
            print(f"zsad: adapter written to {out} (log: {out / 'train_log.csv'}); score with zsad score --method vfm "
                  f"--adapter {out} --backbone {args.backbone} --image-size {config.input_size()} IMAGES", file=sys.stderr)
    return 0
