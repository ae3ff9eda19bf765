"""Command line of learned adapters: ``zsad train-prompts`` and ``zsad adapters ...``.

    zsad train-prompts --data ROOT --out adapters/NAME [--format auto] [--backbone NAME] [--epochs 15] ...
    zsad adapters import-anomalyclip CKPT --out DIR [--backbone NAME] [--trained-on TEXT]
    zsad adapters import-anomalyvfm FILE --out DIR [--image-size 768] [--no-backbone] [--trained-on TEXT]
    zsad adapters info DIR [--backbone NAME]
    zsad adapters add-metrics DIR EVAL_OUT/metrics.json --name DATASET
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from zsad.cli.options import add_activation_option, parse_categories, warn_random_weights
from zsad.errors import UsageError
from zsad.fileio import read_json

if TYPE_CHECKING:
    from zsad.adapters import AdapterFolder
    from zsad.backbones.base import Backbone


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``train-prompts`` and ``adapters`` on the ``zsad`` command line."""
    add_train_prompts_parser(sub)
    add_adapters_parser(sub)


def add_train_prompts_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from zsad.backbones.names import DEFAULT_BACKBONE
    from zsad.data.datasets import FORMATS

    p = sub.add_parser("train-prompts", help="train AnomalyCLIP prompts on a dataset with masks (an adapter folder)")
    p.add_argument("--data", required=True, metavar="ROOT", help="training dataset root (e.g. MVTec AD to test on VisA)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="dataset layout (default auto)")
    p.add_argument("--split", default="test", choices=["test", "train"],
                   help="split to train on (default test: the published protocol trains on the test split)")
    p.add_argument("--categories", default=None, help="comma-separated categories (default: all)")
    p.add_argument("--out", required=True, metavar="DIR", help="adapter folder to write, e.g. adapters/anomalyclip-mvtec")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"backbone (default {DEFAULT_BACKBONE})")
    p.add_argument("--epochs", type=int, default=15, help="epochs (default 15)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step (default 8)")
    p.add_argument("--image-size", type=int, default=518, help="squash-resize size of images and masks (default 518)")
    add_activation_option(p)
    p.add_argument("--seed", type=int, default=111, help="random seed (default 111)")
    p.add_argument("--taps", default="last",
                   help="tapped vision blocks: last (default; the released checkpoints), paper (6/12/18/24 of 24) "
                        "or 0-based numbers like 5,11,17,23")
    p.add_argument("--local-weight", type=float, default=None,
                   help="weight of the map losses (default 4 with one tap, 1 with several)")
    p.add_argument("--n-ctx", type=int, default=12, help="learned words per prompt (default 12)")
    p.add_argument("--deep-length", type=int, default=4, help="deep tokens per text block (default 4)")
    p.add_argument("--deep-depth", type=int, default=None,
                   help="deep tokens enter text blocks 2..DEPTH (default 9, clipped to the text depth)")
    p.add_argument("--dpam-layers", type=int, default=None,
                   help="last vision blocks with the V-V path (default 19 of 24, scaled to the depth)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "fp16", "bf16"],
                   help="precision of the frozen image pass (default fp32, as the official training)")
    p.add_argument("--workers", type=int, default=2, help="image-loading worker processes (default 2)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder for weights")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_prompts)
    return p


def add_adapters_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from zsad.backbones.names import DEFAULT_BACKBONE

    p = sub.add_parser("adapters", help="import, inspect and annotate adapter folders")
    commands = p.add_subparsers(dest="adapters_command", required=True)
    imp = commands.add_parser("import-anomalyclip",
                              help="convert a released AnomalyCLIP checkpoint (epoch_15.pth) into an adapter folder")
    imp.add_argument("checkpoint", metavar="CKPT")
    imp.add_argument("--out", required=True, metavar="DIR", help="adapter folder to write")
    imp.add_argument("--backbone", default=DEFAULT_BACKBONE,
                     help=f"backbone the checkpoint was trained with (default {DEFAULT_BACKBONE}, as released)")
    imp.add_argument("--trained-on", default=None,
                     help='what the prompts were trained on, e.g. "VisA test split" (recorded in adapter.json)')
    imp.add_argument("--image-size", type=int, default=518, help="training image size (default 518)")
    imp.set_defaults(func=cmd_import_anomalyclip)

    vfm = commands.add_parser("import-anomalyvfm",
                              help="convert a released AnomalyVFM checkpoint (model.pkl or the Hub's model.safetensors) "
                                   "into an adapter folder")
    vfm.add_argument("checkpoint", metavar="FILE")
    vfm.add_argument("--out", required=True, metavar="DIR", help="adapter folder to write")
    vfm.add_argument("--image-size", type=int, default=None,
                     help="training image size (default the family's official one: 768 RADIO and DINOv3, 672 DINOv2 and CLIP)")
    vfm.add_argument("--no-backbone", action="store_true",
                     help="do not store the checkpoint's backbone weights (DIR/backbone.safetensors, ~1.2 GB); the "
                          "backbone then comes from its own release (radio:v2.5-l, timm's DINOv2 and DINOv3; CLIP always)")
    vfm.add_argument("--trained-on", default=None, help="what it was trained on (recorded in adapter.json)")
    vfm.set_defaults(func=cmd_import_anomalyvfm)

    info = commands.add_parser("info", help="print an adapter's adapter.json and check it")
    info.add_argument("folder", metavar="DIR")
    info.add_argument("--backbone", default=None, help="also check that the adapter was made for this backbone")
    info.set_defaults(func=cmd_info)

    metrics = commands.add_parser("add-metrics", help="record a `zsad evaluate` result in an adapter's adapter.json")
    metrics.add_argument("folder", metavar="DIR")
    metrics.add_argument("metrics", metavar="METRICS_JSON", help="OUT/metrics.json written by zsad evaluate")
    metrics.add_argument("--name", required=True, help="name of the evaluated dataset, e.g. visa")
    metrics.set_defaults(func=cmd_add_metrics)
    return p


def cmd_train_prompts(args: argparse.Namespace) -> int:
    from zsad.backbones.names import parse_backbone_name
    from zsad.cli.options import process_group
    from zsad.distributed import rank_device
    from zsad.methods.anomalyclip.train import TrainConfig, train_prompts

    with process_group(args) as dist:
        if dist.is_main:
            warn_random_weights(parse_backbone_name(args.backbone), args.backbone,
                                "the trained prompts are meaningless")
        config = TrainConfig(
            data=Path(args.data), out=Path(args.out), format=args.format, split=args.split,
            categories=parse_categories(args.categories), backbone=args.backbone, epochs=args.epochs, lr=args.lr,
            batch_size=args.batch_size, image_size=args.image_size, activation=args.activation, seed=args.seed,
            taps=args.taps, local_weight=args.local_weight, n_ctx=args.n_ctx, deep_length=args.deep_length,
            deep_depth=args.deep_depth, dpam_layers=args.dpam_layers, device=rank_device(args.device, dist),
            precision=args.precision, workers=args.workers, resume=args.resume, progress=not args.quiet,
            cache_dir=args.cache_dir,
        )
        out = train_prompts(config, dist)
        if dist.is_main:
            processes = f" ({dist.world_size} processes, effective batch {args.batch_size * dist.world_size})" \
                if dist.active else ""
            print(f"zsad: adapter written to {out}{processes} (log: {out / 'train_log.csv'}); score with zsad score "
                  f"--method anomalyclip --adapter {out} --backbone {args.backbone} IMAGES", file=sys.stderr)
    return 0


def cmd_import_anomalyclip(args: argparse.Namespace) -> int:
    from zsad.methods.anomalyclip.official import import_checkpoint

    out = import_checkpoint(args.checkpoint, args.out, backbone=args.backbone, trained_on=args.trained_on,
                            image_size=args.image_size)
    print(f"zsad: imported {args.checkpoint} -> {out}", file=sys.stderr)
    return 0


def cmd_import_anomalyvfm(args: argparse.Namespace) -> int:
    from zsad.adapters import read_adapter_config
    from zsad.methods.vfm.adapter import VfmSettings
    from zsad.methods.vfm.official import import_checkpoint, scoring_backbone

    out = import_checkpoint(args.checkpoint, args.out, image_size=args.image_size, with_backbone=not args.no_backbone,
                            trained_on=args.trained_on)
    settings = VfmSettings.from_config(read_adapter_config(out), str(out))
    backbone = scoring_backbone(settings, Path(out))
    print(f"zsad: imported {args.checkpoint} -> {out}; score with zsad score --method vfm --adapter {out} "
          f"--backbone {backbone} --image-size {settings.image_size} IMAGES", file=sys.stderr)
    return 0


def check_known_kind(folder: AdapterFolder, backbone: Backbone | None) -> None:
    """Validator for folders of any kind: the checks of the kinds zsad's methods define (fields, tensor shapes)."""
    from zsad.methods.anomalyclip.adapter import KIND as PROMPTS
    from zsad.methods.anomalyclip.adapter import check_folder

    if folder.kind == PROMPTS:
        check_folder(folder, backbone)
    from zsad.methods.vfm.adapter import KIND as VFM
    from zsad.methods.vfm.adapter import check_folder as check_vfm

    if folder.kind == VFM:
        check_vfm(folder, backbone)


def cmd_info(args: argparse.Namespace) -> int:
    from zsad.adapters import load

    folder = load(args.folder, args.backbone, validator=check_known_kind)
    record = {"kind": folder.kind, **folder.config,
              "tensors": {name: list(t.shape) for name, t in folder.tensors.items()}}
    print(json.dumps(record, indent=2))
    return 0


def cmd_add_metrics(args: argparse.Namespace) -> int:
    from zsad.adapters import load, save_adapter

    folder = load(args.folder, validator=check_known_kind)
    path = Path(args.metrics)
    result = read_json(path, UsageError, "evaluation metrics")
    if not isinstance(result, dict) or "mean" not in result:
        raise UsageError(f"{path}: not a metrics.json of zsad evaluate (no 'mean' field)")
    config = dict(folder.config)
    config["metrics"] = {**(config.get("metrics") or {}),
                         args.name: {k: result.get(k) for k in ("mean", "method", "backbone", "activation",
                                                                "aupro_variant")}}
    save_adapter(args.folder, folder.kind, config, folder.tensors)
    print(f"zsad: recorded metrics for '{args.name}' in {Path(args.folder) / 'adapter.json'}", file=sys.stderr)
    return 0
