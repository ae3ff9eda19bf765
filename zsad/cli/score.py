"""``zsad score``: a folder of images -> results.csv, results.jsonl and overlays, through the runner."""

from __future__ import annotations

import argparse
import os
import sys
import time

from zsad.cli.options import (
    add_anomalydino_options,
    add_method_option,
    add_model_options,
    add_msm_option,
    anomalydino_options,
    method_options,
    warn_random_weights,
)
from zsad.decisions import check_unit
from zsad.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from zsad.runner import GROUP_BY

    p = sub.add_parser("score", help="score images: per-image score, anomaly map, mask, defect type")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or globs")
    add_method_option(p)
    p.add_argument("--group-by", default="none", choices=list(GROUP_BY),
                   help="folder: score each real parent folder as its own category (matters for musc/auto)")
    add_model_options(p)
    add_msm_option(p)
    add_anomalydino_options(p)
    from zsad.cli.export import add_runtime_options

    add_runtime_options(p)  # after the model options: marks their defaults as not given
    p.add_argument("--out", default="zsad-results", help="output folder (default zsad-results)")
    p.add_argument("--resume", action="store_true", help="skip images that already have a row in OUT/results.csv")
    p.add_argument("--no-maps", action="store_true", help="do not write heat-map overlays")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse images larger than this many pixels")
    p.add_argument("--threshold-from", default=None, metavar="GOOD",
                   help="images known to be good (folder, files or glob): decide with thresholds taken from "
                        "their scores instead of --threshold (see README, 'Thresholds without defect examples')")
    p.add_argument("--reference", default=None, metavar="GOOD",
                   help="known-good images of the product (folder, files or glob): score each image by its patches' "
                        "distance to theirs (works for a single image, on any backbone; with musc/auto a batch is "
                        "scored jointly with them). Scores are calibrated so 0.5 = as far as the worst held-out good "
                        "image (see README, 'References, MuSc or learned prompts'). With --method anomalydino: "
                        "AnomalyDINO's few-shot scoring (DINOv2 ViT-S at 448 unless --backbone/--image-size)")
    p.add_argument("--coreset", type=float, default=None, metavar="FRACTION",
                   help="with --reference: keep this fraction of the reference patches (greedy coreset) to save "
                        "memory and time on large reference sets (default: all, up to 262,144 per bank)")
    p.add_argument("--good-quantile", type=float, default=0.99,
                   help="with --threshold-from: the quantile of the good scores used as threshold (default 0.99)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _report(where: str, thresholds) -> None:
    print(f"zsad: {thresholds.describe()}{' for group ' + repr(where) if where else ''}", file=sys.stderr)


def _reference_options(args: argparse.Namespace) -> dict:
    """``references=`` (the known-good files of ``--reference``) and the options scoring against them takes."""
    from zsad.runner import sources_from_inputs

    found = [s.path for s in sources_from_inputs([args.reference])]
    if not found:
        raise UsageError(f"--reference {args.reference}: no images found")
    options: dict = {"references": found}
    if args.coreset is not None:
        options["coreset"] = args.coreset
    return options


def _repeated(args: argparse.Namespace, keys: set[str]) -> list[str]:
    """The repeated anomalies named in the finished results.jsonl rows of this run's inputs (``keys``): its own rows
    and a resumed run's earlier ones (a group whose rows were all written before is not scored again, yet its
    pattern is still there)."""
    from pathlib import Path

    from zsad.methods.musc.repeats import describe_repeats
    from zsad.outputs import read_committed

    rows = [r for r in read_committed(Path(args.out), repair=False).records
            if r.get("file") in keys and (r.get("extras") or {}).get("repeat_pattern")]
    return describe_repeats((os.path.dirname(r["file"]) if args.group_by == "folder" else "", r["extras"])
                            for r in rows)


def run(args: argparse.Namespace) -> int:
    from zsad.cli.options import process_group

    with process_group(args) as dist:
        return _score(args, dist)


def _score(args: argparse.Namespace, dist) -> int:
    import zsad
    from zsad.cli import EXIT_OK, EXIT_SOME_FAILED
    from zsad.cli.options import progress_bar
    from zsad.data.images import DEFAULT_MAX_PIXELS
    from zsad.distributed import rank_device
    from zsad.outputs import RunOutputs
    from zsad.runner import sources_from_inputs

    started = time.perf_counter()
    check_unit(args.good_quantile, "--good-quantile")
    sources = sources_from_inputs(args.inputs)
    good_sources = sources_from_inputs([args.threshold_from]) if args.threshold_from else None
    from zsad.cli.export import runtime_options

    runtime = runtime_options(args)  # --runtime onnx: model flags not given come from the export
    extra = method_options(args, args.method)
    extra.update(runtime)
    extra.update(anomalydino_options(args))
    from zsad.cli.export import _given

    # flags left at their defaults: the method's own (anomalydino: DINOv2 ViT-S at 448 / 672)
    backbone = args.backbone if _given(args.backbone) else None
    image_size = args.image_size if _given(args.image_size) else None
    if args.reference:
        extra.update(_reference_options(args))
    detector = zsad.create(
        args.method, backbone=backbone, device=rank_device(args.device, dist), precision=args.precision,
        image_size=image_size, batch_size=args.batch_size, threshold=args.threshold,
        class_name=args.class_name, cache_dir=args.cache_dir, warn_random=False, **extra,
    )
    if dist.is_main:
        warn_random_weights(detector.backbone, detector.backbone.spec.name)
    runner = detector.runner(max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, keep_images=not args.no_maps)
    runner.on_thresholds = _report if dist.is_main else None
    scored = anomalous = failed = 0
    outputs = RunOutputs(args.out, [s.key for s in sources], resume=args.resume, save_maps=not args.no_maps,
                         dist=dist)
    with outputs as writer:
        pending = sum(1 for s in sources if s.key not in writer.done)
        if args.resume and pending < len(sources) and dist.is_main:
            print(f"zsad: resuming: {len(sources) - pending} images already done", file=sys.stderr)
        if good_sources is not None and pending:
            try:
                runner.use_good_images(good_sources, args.good_quantile)
            except UsageError as exc:
                raise UsageError(f"--threshold-from {args.threshold_from}: {exc}") from None
        with progress_bar(pending, args.quiet, dist, outputs) as advance:
            for outcome in runner.run(sources, group_by=args.group_by, done=writer.done, progress=advance,
                                      dist=dist):
                source = outcome.source
                if outcome.ok:
                    writer.write(source.key, outcome.result, outcome.image)
                    scored += 1
                    anomalous += int(outcome.result.pred_label)
                else:
                    print(f"zsad: WARNING: {source.label}: {outcome.error}", file=sys.stderr)
                    writer.write_error(source.key, source.label, outcome.error)
                    failed += 1
    final = outputs.final_state() if dist.active else writer.done
    errors = sum(1 for s in sources if not final.get(s.key, False))
    totals = dist.all_gather_object((scored, anomalous, failed))
    scored, anomalous, failed = (sum(t[i] for t in totals) for i in range(3))
    seconds = time.perf_counter() - started
    if dist.is_main:
        ranks = f" on {dist.world_size} processes" if dist.active else ""
        print(f"zsad: {scored + failed} images: {scored} scored, {anomalous} anomalous, {failed} failed, "
              f"{seconds:.1f} s{ranks} -> {args.out}"
              + (f"; {errors} of {len(sources)} inputs have an error row" if errors else ""), file=sys.stderr)
        for line in _repeated(args, {s.key for s in sources}):
            print(f"zsad: REPEATED ANOMALY: {line}: the same defect on many parts points to a systematic cause "
                  f"(tool, fixture); its rows carry repeat_pattern in results.jsonl", file=sys.stderr)
    return EXIT_SOME_FAILED if errors else EXIT_OK
