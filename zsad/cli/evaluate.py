"""``zsad evaluate``: benchmark a method on a labelled dataset (see :mod:`zsad.evaluate`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zsad.cli.options import (
    add_activation_option,
    add_anomalydino_options,
    add_device_options,
    add_method_option,
    add_msm_option,
    anomalydino_options,
    method_options,
    parse_categories,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from zsad.backbones.names import DEFAULT_BACKBONE
    from zsad.data.datasets import FORMATS
    from zsad.evaluate import AUPIMO_FPR_BOUNDS
    from zsad.metrics.pro import AUPRO_VARIANTS

    p = sub.add_parser("evaluate", help="benchmark a method on a dataset: image/pixel AUROC, AP, F1-max, AUPRO, "
                                        "AUPIMO, per defect type")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root (MVTec AD, VisA, MPDD, BTAD, ...)")
    add_method_option(p, "method to evaluate")
    p.add_argument("--backbone", default=None,
                   help=f"backbone (default: the method's; {DEFAULT_BACKBONE}, anomalydino: DINOv2 ViT-S/14)")
    p.add_argument("--image-size", type=int, default=None,
                   help="squash-resize size (default: the method's; 518, anomalydino: shorter side 672, 448 with "
                        "--reference-shots)")
    add_activation_option(p)
    p.add_argument("--categories", default=None, help="comma-separated categories (default: all)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="dataset layout (default auto)")
    p.add_argument("--out", default="zsad-eval", help="output folder (default zsad-eval)")
    p.add_argument("--resume", action="store_true", help="reuse categories already finished in OUT")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh: drop the finished categories in OUT (e.g. after changing settings)")
    p.add_argument("--aupro-variant", default="mvtec", choices=list(AUPRO_VARIANTS),
                   help="AUPRO integration convention (default mvtec)")
    p.add_argument("--aupimo-fpr-bounds", type=float, nargs=2, metavar=("LO", "HI"), default=AUPIMO_FPR_BOUNDS,
                   help="shared-FPR range AUPIMO integrates over, log scale (default {:g} {:g}, the paper's)"
                        .format(*AUPIMO_FPR_BOUNDS))
    add_device_options(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--prompts", default=None, help="a prompt-bank YAML replacing bundled sections (clip method)")
    p.add_argument("--adapter", default=None, help="a learned-prompt adapter folder (anomalyclip method)")
    add_msm_option(p)
    add_anomalydino_options(p)
    p.add_argument("--reference-shots", type=int, default=None, metavar="K",
                   help="few-shot: score each category against K normal images drawn from its train split "
                        "(reference-guided scoring; see README)")
    p.add_argument("--reference-seed", type=int, nargs="+", default=[0], metavar="S",
                   help="seed(s) of the reference draw (default 0); several seeds write OUT/seed-S each and "
                        "print the mean and standard deviation over seeds")
    from zsad.methods.reference.shots import DRAWS

    p.add_argument("--reference-draw", default="slice", choices=list(DRAWS),
                   help="how the shots are chosen: slice (default; AnomalyDINO's protocol: train images sorted by "
                        "name, [seed*K, (seed+1)*K)) or random (K drawn with the seed)")
    p.add_argument("--metrics-backend", default="zsad", choices=["zsad", "anomalib"],
                   help="anomalib: also compute image/pixel AUROC, AUPRO and AUPIMO with anomalib's metric classes on "
                        "the same maps, next to zsad's (needs zsad[anomalib])")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """One evaluation, or (``--reference-shots`` with several ``--reference-seed``) one per seed and a summary."""
    seeds = list(dict.fromkeys(args.reference_seed))
    if args.reference_shots is None or len(seeds) == 1:
        return _run_one(args, Path(args.out), seeds[0])
    import json

    codes, summaries = [], []
    for seed in seeds:
        codes.append(_run_one(args, Path(args.out) / f"seed-{seed}", seed))
        summaries.append(json.loads((Path(args.out) / f"seed-{seed}" / "metrics.json").read_text(encoding="utf-8")))
    _print_seed_summary(args, seeds, summaries)
    return max(codes)


def _print_seed_summary(args: argparse.Namespace, seeds: list[int], summaries: list[dict]) -> None:
    """Mean and standard deviation over seeds of the mean metrics (the few-shot protocol's report)."""
    import json

    import numpy as np

    from zsad.evaluate import METRIC_KEYS
    from zsad.fileio import atomic_write_text

    rows = {}
    for key in METRIC_KEYS:
        values = [s["mean"].get(key) for s in summaries if s["mean"].get(key) is not None]
        if values:
            rows[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "n_seeds": len(values)}
    record = {"reference_shots": args.reference_shots, "seeds": seeds, "metrics": rows}
    atomic_write_text(Path(args.out) / "metrics_seeds.json", json.dumps(record, indent=2) + "\n")
    print(f"\n{args.reference_shots}-shot over seeds {', '.join(map(str, seeds))} (mean ± std of the category means):")
    print("| metric | mean | std |\n|---|---|---|")
    for key, row in rows.items():
        print(f"| {key} | {row['mean']:.3f} | {row['std']:.3f} |")


def _run_one(args: argparse.Namespace, out: Path, seed: int) -> int:
    """Run :func:`zsad.evaluate.evaluate` (on every rank under a launcher) and print the Markdown table."""
    from zsad.cli.options import process_group
    from zsad.detector import default_model
    from zsad.distributed import rank_device
    from zsad.evaluate import EvaluateConfig, evaluate, metrics_markdown

    options = method_options(args, args.method)
    options.pop("progress", None)  # evaluation has its own bars
    options.pop("activation", None)  # a field of its own (args.activation)
    options.update(anomalydino_options(args))
    backbone, image_size = default_model(args.method, references=args.reference_shots is not None)
    with process_group(args) as dist:
        config = EvaluateConfig(
            data=Path(args.data), out=out, method=args.method, backbone=args.backbone or backbone,
            activation=args.activation,
            image_size=args.image_size or image_size, categories=parse_categories(args.categories), format=args.format,
            aupro_variant=args.aupro_variant, aupimo_fpr_bounds=tuple(args.aupimo_fpr_bounds), resume=args.resume,
            overwrite=args.overwrite, device=rank_device(args.device, dist), precision=args.precision,
            batch_size=args.batch_size, progress=not args.quiet, method_options=options,
            reference_shots=args.reference_shots, reference_seed=seed, reference_draw=args.reference_draw,
            metrics_backend=args.metrics_backend,
        )
        summary = evaluate(config, dist)
        if not dist.is_main:
            return 1 if sum((summary.get("n_failed") or {}).values()) else 0
    print(metrics_markdown(summary), end="")
    failed = sum((summary.get("n_failed") or {}).values())
    if failed:
        print(f"zsad: {failed} test images could not be scored and are left out of the metrics (see "
              f"{out / 'per_image'})", file=sys.stderr)
    print(f"zsad: wrote {out / 'metrics.json'}", file=sys.stderr)
    return 1 if failed else 0
