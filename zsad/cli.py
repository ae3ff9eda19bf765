"""The ``zsad`` command line: a thin shell over the Python API.

Exit codes: 0 every image scored, 1 some images failed, 2 usage error (bad option, path, name, weights).
User mistakes print one line (``zsad: error: ...``), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

from zsad.errors import ZsadError

log = logging.getLogger("zsad")

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def _add_model_options(p: argparse.ArgumentParser, *, adapter: bool = True) -> None:
    from zsad.backbones.names import DEFAULT_BACKBONE

    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help=f"ARCH:TAG, ARCH:random, ARCH:/path/to/weights, hf-hub:ORG/REPO or tiny-random "
                        f"(default {DEFAULT_BACKBONE})")
    p.add_argument("--class-name", default=None, help='what the images show, e.g. "bottle" (default "object")')
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="compute precision (default: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--image-size", type=int, default=518, help="squash-resize size, a multiple of the patch size")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="decision threshold on image scores and map values, in [0, 1] (default 0.5)")
    p.add_argument("--prompts", default=None, help="a prompt-bank YAML replacing bundled sections (clip method)")
    if adapter:
        p.add_argument("--adapter", default=None,
                       help="a learned-prompt adapter folder (anomalyclip method; see adapters/README.md)")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder for weights")


def build_parser() -> argparse.ArgumentParser:
    from zsad.methods import list_methods

    parser = argparse.ArgumentParser(prog="zsad", description="Zero-shot anomaly detection with vision-language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    score = sub.add_parser("score", help="score images: per-image score, anomaly map, mask, defect type")
    score.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or globs")
    score.add_argument("--method", default="auto", choices=list_methods(),
                       help="auto (default): MuSc fused with clip for >= 5 images, clip alone otherwise")
    score.add_argument("--group-by", default="none", choices=["none", "folder"],
                       help="folder: score each subfolder as its own category (matters for musc/auto)")
    _add_model_options(score)
    score.add_argument("--out", default="zsad-results", help="output folder (default zsad-results)")
    score.add_argument("--resume", action="store_true", help="skip images already in OUT/results.csv")
    score.add_argument("--no-maps", action="store_true", help="do not write heat-map overlays")
    score.add_argument("--max-pixels", type=int, default=None, help="refuse images larger than this many pixels")
    score.add_argument("--threshold-from", default=None, metavar="GOOD",
                       help="images known to be good (folder, files or glob): decide with thresholds taken from "
                            "their scores instead of --threshold (see README, 'Thresholds without defect examples')")
    score.add_argument("--good-quantile", type=float, default=0.99,
                       help="with --threshold-from: the quantile of the good scores used as threshold (default 0.99)")
    score.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    score.set_defaults(func=cmd_score)

    from zsad.evaluate import add_evaluate_parser

    add_evaluate_parser(sub)
    from zsad.adapters.cli import add_prompt_parsers
    add_prompt_parsers(sub)
    from zsad.dialogue.cli import add_ask_parser
    add_ask_parser(sub)
    from zsad.dialogue.train import add_train_dialogue_parser
    add_train_dialogue_parser(sub)
    from zsad.demo_cli import add_demo_parser
    add_demo_parser(sub)

    models = sub.add_parser("models", help="list methods and backbones")
    models.set_defaults(func=cmd_models)

    synth = sub.add_parser("make-synthetic", help="write a synthetic MVTec-AD-layout dataset with planted defects")
    synth.add_argument("root")
    synth.add_argument("--categories", default=None, help="comma-separated (default: all)")
    synth.add_argument("--n-train-good", type=int, default=5)
    synth.add_argument("--n-test-good", type=int, default=5)
    synth.add_argument("--n-test-defect", type=int, default=5)
    synth.add_argument("--size", type=int, default=256)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_make_synthetic)
    return parser


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _group(items: list, group_by: str) -> list[tuple[str, list]]:
    """Images scored jointly by transductive methods: all together, or one group per subfolder."""
    if group_by == "none":
        return [("", items)]
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(str(item.relative.parent), []).append(item)
    return list(groups.items())


class _Run:
    """Counts and writes one ``zsad score`` run's outcomes."""

    def __init__(self, writer, bar) -> None:
        self.writer, self.bar = writer, bar
        self.scored = self.anomalous = self.failed = 0

    def error(self, path: str, problem: str) -> None:
        log.warning("%s: %s", path, problem)
        self.writer.write_error(path, problem)
        self.failed += 1
        self.bar.update(1)

    def result(self, result, image, relative, thresholds=None) -> None:
        """Write ``result``, decided again with ``thresholds`` (:class:`GoodThresholds`) when given."""
        from zsad.thresholds import apply_thresholds

        if thresholds is not None:
            result = apply_thresholds(result, thresholds.image, thresholds.pixel)
        self.writer.write(result, image, relative)
        self.scored += 1
        self.anomalous += int(result.pred_label)
        self.bar.update(1)

    def load(self, items, max_pixels: int) -> list:
        from zsad.data.images import load_image
        from zsad.errors import ImageError

        loaded = []
        for item in items:
            try:
                loaded.append((item, load_image(item.path, max_pixels=max_pixels)))
            except ImageError as exc:
                self.error(str(item.path), exc.problem)
        return loaded


def _score_independent(detector, items, run: _Run, batch_size: int, max_pixels: int, thresholds=None) -> None:
    for chunk in _batches(items, batch_size):
        loaded = run.load(chunk, max_pixels)
        if loaded:
            results = detector.score_images([img for _, img in loaded], [str(item.path) for item, _ in loaded])
            for (item, image), result in zip(loaded, results):
                run.result(result, image, item.relative, thresholds)


def _score_jointly(detector, name: str, items, run: _Run, batch_size: int, max_pixels: int, several: bool,
                   good=None) -> None:
    """Transductive scoring of one group: features chunk by chunk (images are not kept), then joint scoring;
    images are read again only to draw their overlays. Rows already written (resume) are not written again.

    ``good`` (a :class:`_GoodImages`) joins every group first, so its batch-relative scores set the thresholds.
    A good image that is also one of the group's inputs is not added twice (an image next to its own copy scores
    about 0 under mutual scoring): its own row's result counts as a good score."""
    import itertools

    from zsad.data.images import load_image
    from zsad.errors import BatchTooSmallError, ImageError
    from zsad.thresholds import thresholds_from_good

    shared = good.shared_with(items) if good else set()
    items = sorted(items, key=lambda item: _path_key(item.path) not in shared)  # shared ones first, order kept
    kept, sizes, chunks = [], [], []
    for chunk in _batches(items, batch_size):
        loaded = run.load(chunk, max_pixels)
        if loaded:
            chunks.append(detector.extract_chunk([img for _, img in loaded]))
            kept += [item for item, _ in loaded]
            sizes += [img.size for _, img in loaded]
    if not kept:
        return
    good_chunks, good_sizes, good_paths = good.joining(detector, shared) if good else ([], [], [])
    try:
        results = iter(detector.joint_results(good_chunks + chunks, good_sizes + sizes,
                                              good_paths + [str(i.path) for i in kept]))
        thresholds = None
        if good:
            extra = [next(results) for _ in good_paths]
            own = [next(results) for item in kept if _path_key(item.path) in shared]
            thresholds = thresholds_from_good(extra + own, good.quantile)
            _report_thresholds(thresholds, f"group '{name}'" if several else "")
            results = itertools.chain(own, results)
    except BatchTooSmallError as exc:
        if not several:
            raise
        for item in kept:  # with --group-by folder, one small folder must not stop the others
            run.error(str(item.path), f"folder '{name}': {exc}")
        return
    for item, result in zip(kept, results):
        if str(item.path) in run.writer.done:
            continue
        try:
            image = load_image(item.path, max_pixels=max_pixels)
        except ImageError as exc:  # the file changed since it was read
            run.error(str(item.path), exc.problem)
            continue
        run.result(result, image, item.relative, thresholds)


class _GoodImages:
    """Known-good images for ``--threshold-from``: loaded once; transductive methods keep their features."""

    def __init__(self, detector, source: str, quantile: float, batch_size: int, max_pixels: int) -> None:
        from zsad.data.images import discover_images, load_image
        from zsad.errors import ImageError, UsageError

        if not 0.0 <= quantile <= 1.0:
            raise UsageError(f"--good-quantile must be in [0, 1], got {quantile}")
        self.quantile = quantile
        self.batch_size = batch_size
        images, self.paths = [], []
        for item in discover_images([source]):
            try:
                images.append(load_image(item.path, max_pixels=max_pixels))
                self.paths.append(str(item.path))
            except ImageError as exc:
                log.warning("--threshold-from: skipping %s: %s", item.path, exc.problem)
        if not images:
            raise UsageError(f"--threshold-from {source}: no readable good images")
        self.sizes = [img.size for img in images]
        self.keys = [_path_key(p) for p in self.paths]
        self.chunks = []
        self.images = []
        self.thresholds = None
        if detector.method.transductive:
            self.images = images  # kept (a few good images) to re-extract a subset for groups that share some
            self.chunks = [detector.extract_chunk(c) for c in _batches(images, batch_size)]
        else:
            from zsad.thresholds import thresholds_from_good

            self.thresholds = thresholds_from_good(detector.score_images(images, self.paths), quantile)
            _report_thresholds(self.thresholds, "")

    def shared_with(self, items) -> set[str]:
        """Keys of the good images that are also among ``items`` (the same file, however it was named)."""
        return set(self.keys) & {_path_key(item.path) for item in items}

    def joining(self, detector, shared: set[str]) -> tuple[list, list, list]:
        """(feature chunks, sizes, paths) of the good images to add to a group: all but those it already holds."""
        if not shared:
            return self.chunks, self.sizes, self.paths
        keep = [i for i, key in enumerate(self.keys) if key not in shared]
        images = [self.images[i] for i in keep]
        return ([detector.extract_chunk(c) for c in _batches(images, self.batch_size)],
                [self.sizes[i] for i in keep], [self.paths[i] for i in keep])


def _path_key(path) -> str:
    return os.path.realpath(str(path))


def _report_thresholds(thresholds, where: str) -> None:
    print(f"zsad: thresholds from {thresholds.n_good} good images{' for ' + where if where else ''} "
          f"(quantile {thresholds.quantile:g}): image {thresholds.image:.4f}, pixel {thresholds.pixel:.4f}",
          file=sys.stderr)


def _method_options(args: argparse.Namespace) -> dict:
    """CLI flags that map onto fields of the chosen method's config."""
    options = {}
    if args.prompts:
        options["prompts"] = args.prompts
    if getattr(args, "adapter", None):
        options["adapter"] = args.adapter
    if args.method in ("musc", "auto") and not args.quiet and sys.stderr.isatty():
        options["progress"] = True  # a bar over mutual-scoring blocks, which dominate large batches (not in logs)
    return options


def cmd_score(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    import zsad
    from zsad.data.images import DEFAULT_MAX_PIXELS, discover_images
    from zsad.outputs import ResultWriter

    started = time.perf_counter()
    inputs = discover_images(args.inputs)
    detector = zsad.create(
        args.method, backbone=args.backbone, device=args.device, precision=args.precision,
        image_size=args.image_size, batch_size=args.batch_size, threshold=args.threshold,
        class_name=args.class_name, cache_dir=args.cache_dir, warn_random=False,
        **_method_options(args),
    )
    if detector.backbone.random_weights:
        print(f"zsad: WARNING: backbone '{args.backbone}' has random weights: scores are meaningless "
              f"(fine for tests and smoke runs; use real weights for inspection)", file=sys.stderr)
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    groups = _group(inputs, args.group_by)
    with ResultWriter(args.out, resume=args.resume, save_maps=not args.no_maps) as writer:
        todo = [item for item in inputs if str(item.path) not in writer.done]
        if args.resume and len(todo) < len(inputs):
            print(f"zsad: resuming: {len(inputs) - len(todo)} images already done", file=sys.stderr)
        good = None
        if args.threshold_from:
            good = _GoodImages(detector, args.threshold_from, args.good_quantile, args.batch_size, max_pixels)
        run = _Run(writer, tqdm(total=len(todo), unit="img", file=sys.stderr, disable=args.quiet or None))
        for name, items in groups:
            if all(str(item.path) in writer.done for item in items):
                continue
            if detector.method.transductive:  # a partly written group is scored whole again: scores are joint
                _score_jointly(detector, name, items, run, args.batch_size, max_pixels, len(groups) > 1, good)
            else:
                pending = [item for item in items if str(item.path) not in writer.done]
                _score_independent(detector, pending, run, args.batch_size, max_pixels,
                                   good.thresholds if good else None)
        run.bar.close()
    seconds = time.perf_counter() - started
    print(f"zsad: {run.scored + run.failed} images: {run.scored} scored, {run.anomalous} anomalous, "
          f"{run.failed} failed, {seconds:.1f} s -> {args.out}", file=sys.stderr)
    return EXIT_SOME_FAILED if run.failed else EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from zsad.backbones import KNOWN_BACKBONES
    from zsad.methods import METHODS

    print("methods:")
    for name, (_, _, description) in METHODS.items():
        print(f"  {name:14s} {description}")
    print("backbones (any open_clip ViT ARCH:TAG works too; see open_clip.list_pretrained()):")
    for name, description in KNOWN_BACKBONES:
        print(f"  {name:34s} {description}")
    return EXIT_OK


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from pathlib import Path

    from zsad.data.synthetic import make_dataset

    categories = args.categories.split(",") if args.categories else None
    folders = make_dataset(Path(args.root), categories=categories, n_train_good=args.n_train_good,
                           n_test_good=args.n_test_good, n_test_defect=args.n_test_defect, size=args.size,
                           seed=args.seed)
    print(f"zsad: wrote {len(folders)} categories under {args.root}", file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="zsad: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except ZsadError as exc:
        print(f"zsad: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("zsad: interrupted; finished rows are kept (use --resume to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
