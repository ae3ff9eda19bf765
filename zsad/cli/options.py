"""Flags and checks shared by the ``zsad`` commands: model options, method options, categories, warnings."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from zsad.errors import UsageError


def add_model_options(p: argparse.ArgumentParser, *, adapter: bool = True) -> None:
    """Backbone, device, precision, sizes, threshold and prompt options of every scoring command."""
    from zsad.backbones.names import DEFAULT_BACKBONE

    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help=f"ARCH:TAG, ARCH:random, ARCH:/path/to/weights, hf-hub:ORG/REPO or tiny-random "
                        f"(default {DEFAULT_BACKBONE})")
    p.add_argument("--class-name", default=None, help='what the images show, e.g. "bottle" (default "object")')
    add_activation_option(p)
    add_device_options(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--image-size", type=int, default=518, help="squash-resize size, a multiple of the patch size")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="decision threshold on image scores and map values, in [0, 1] (default 0.5)")
    p.add_argument("--prompts", default=None, help="a prompt-bank YAML replacing bundled sections (clip method)")
    if adapter:
        p.add_argument("--adapter", default=None,
                       help="a learned-prompt adapter folder (anomalyclip method; see adapters/README.md)")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder for weights")


def add_activation_option(p: argparse.ArgumentParser) -> None:
    from zsad.backbones.activation import ACTIVATIONS

    p.add_argument("--activation", default="auto", choices=list(ACTIVATIONS),
                   help="MLP activation of the backbone's blocks. auto (default): what the method's published code "
                        "used: gelu for musc with OpenAI weights at a size other than the model config's (the "
                        "official MuSc loader), otherwise the weights' own (quick_gelu for OpenAI's)")


def add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="compute precision (default: fp16 on CUDA, fp32 on CPU)")


def add_msm_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--msm-precision", default="fp32", choices=["fp32", "fp16"],
                   help="musc/auto: storage of the mutual-scoring features; fp16 halves their memory and on CUDA "
                        "screens pair products on tensor cores with exact fp32 re-scoring (default fp32)")
    from zsad.methods.musc.repeats import REPEAT_MODES

    p.add_argument("--repeats", default=None, choices=list(REPEAT_MODES),
                   help="musc/auto: a defect repeated on many images of a batch (a worn tool, a misplaced fixture) "
                        "hides itself from mutual scoring. exclude (default): find such repeats, name them on the "
                        "rows and in the summary, and score their images without letting them vouch for each "
                        "other; report: find and name them, keep plain MuSc scores; off: plain MuSc")


def add_anomalydino_options(p: argparse.ArgumentParser) -> None:
    """AnomalyDINO's masking and rotation switches (``--method anomalydino``)."""
    p.add_argument("--foreground-mask", default="auto", choices=["auto", "on", "off"],
                   help="anomalydino: leave background test patches out (first PCA component of the image's patch "
                        "tokens, as AnomalyDINO). auto (default): the official per-category setting in evaluate "
                        "(MVTec AD: capsule, hazelnut, pill, screw, toothbrush; VisA: all), off in score")
    p.add_argument("--no-rotation", action="store_true",
                   help="anomalydino with references: do not add each reference's 7 rotations (45-degree steps) to "
                        "the bank (the official default adds them)")
    p.add_argument("--search", default=None, choices=["exact", "ivf", "auto"],
                   help="anomalydino with references: nearest-patch search. exact: every bank row, as the official "
                        "code; ivf: an inverted-file index, several times faster on large banks, a patch's distance "
                        "may come out slightly larger (see README); auto (default; evaluate: exact): ivf above "
                        "32,768 bank rows (more than 4 references with rotations at 448)")


def anomalydino_options(args: argparse.Namespace) -> dict:
    """The AnomalyDINO options the user set (``masking``, ``rotation``); a method without them refuses them."""
    options: dict = {}
    if getattr(args, "foreground_mask", "auto") != "auto":
        options["masking"] = args.foreground_mask == "on"
    if getattr(args, "no_rotation", False):
        options["rotation"] = False
    if getattr(args, "search", None):
        options["search"] = args.search
    return options


def method_options(args: argparse.Namespace, method: str) -> dict:
    """CLI flags that map onto fields of the chosen method's config (only the ones the user set), plus
    ``activation`` when set, which ``zsad.create`` takes beside them."""
    options = {}
    if getattr(args, "activation", "auto") != "auto":
        options["activation"] = args.activation
    if getattr(args, "prompts", None):
        options["prompts"] = args.prompts
    if getattr(args, "adapter", None):
        options["adapter"] = args.adapter
    if "msm_precision" in _config_fields(method):  # the methods with mutual scoring (musc, auto)
        if getattr(args, "msm_precision", "fp32") != "fp32":
            options["msm_precision"] = args.msm_precision
        if getattr(args, "repeats", None):
            options["repeats"] = args.repeats
        if not getattr(args, "quiet", True) and sys.stderr.isatty():
            options["progress"] = True  # a bar over mutual-scoring blocks, which dominate large batches (not in logs)
    return options


def _config_fields(method: str) -> set[str]:
    import dataclasses

    from zsad.methods import method_class

    config = method_class(method).config_class
    return {f.name for f in dataclasses.fields(config)} if config is not None else set()


def add_method_option(p: argparse.ArgumentParser, what: str = "scoring method", **capabilities) -> None:
    """``--method``, its choices read from the method classes (only those with ``capabilities``, e.g.
    ``min_batch=1``), its default the library's."""
    from zsad.methods import DEFAULT_METHOD, list_methods, method_class

    names = list_methods(**capabilities)
    default = DEFAULT_METHOD if DEFAULT_METHOD in names else names[0]
    lines = "; ".join(f"{n}: {method_class(n).summary}" for n in names)
    p.add_argument("--method", default=default, choices=names, help=f"{what} (default {default}). {lines}")


def warn_random_weights(model, name: str, what: str = "scores are meaningless") -> None:
    """The one warning that a run's numbers come from random weights (``model.random_weights``)."""
    from zsad.errors import random_weights_message

    if getattr(model, "random_weights", False):
        print(f"zsad: WARNING: {random_weights_message(name, what)}", file=sys.stderr)


def parse_categories(text: str | None) -> tuple[str, ...] | None:
    """``a,b`` -> ("a", "b"); None stays None (every category); an empty list is a usage error."""
    if text is None:
        return None
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise UsageError("--categories is empty; leave it out to use every category")
    return names


#: Arguments that may differ between the ranks of one run (the rest must match).
_PER_RANK_ARGUMENTS = frozenset({"func"})


@contextlib.contextmanager
def process_group(args: argparse.Namespace) -> Iterator:
    """The :class:`zsad.distributed.Dist` of a command started by ``torchrun`` / ``accelerate launch`` (a no-op
    object in one process): joined for the command, checked for identical arguments, closed at the end."""
    from zsad.distributed import from_env

    dist = from_env(getattr(args, "device", "auto"))
    try:
        dist.check_same({k: v for k, v in vars(args).items() if k not in _PER_RANK_ARGUMENTS}, "arguments")
        yield dist
        # every rank done before any tears the group down: rank 0 still prints the summary after the last
        # collective, and a peer destroying the group meanwhile aborted it at exit once ("terminate called")
        dist.barrier("finishing")
    finally:
        dist.close()


@contextlib.contextmanager
def progress_bar(total: int, quiet: bool, dist, outputs) -> Iterator[Callable[[int], None]]:
    """One bar on rank 0 over all ranks' images: its own progress plus the rows the other ranks' shards hold
    (read at most once a second; no collective, so a slow rank never stalls the bar)."""
    from tqdm.auto import tqdm

    own = 0
    last = 0.0
    with tqdm(total=total, unit="img", file=sys.stderr, disable=quiet or not dist.is_main or None) as bar:
        def advance(n: int) -> None:
            nonlocal own, last
            own += n
            if not dist.active:
                bar.update(n)
                return
            now = time.monotonic()
            if now - last >= 1.0:
                last = now
                others = sum(_rows(outputs.shard(r) / "results.csv") for r in range(1, dist.world_size))
                bar.n = min(total, own + others)
                bar.refresh()

        yield advance


def _rows(csv_path) -> int:
    try:
        with open(csv_path, "rb") as handle:
            return max(0, handle.read().count(b"\n") - 1)
    except OSError:
        return 0
