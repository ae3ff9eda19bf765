"""Benchmark for repeated anomalies (issue 25): what repetition costs exact MuSc, what the repeat-aware scoring
gets back, what it costs where nothing repeats, and how long it takes.

Usage::

    python evaluation/bench_repeats.py [--backbone tiny-random] [--n 50] [--fractions 0 0.1 0.25 0.5]
        [--kinds mesh washer] [--seeds 0 1 2] [--oneoffs 3] [--singletons 6] [--timing 50 200] [--json OUT]

Batches come from ``tests/repeat_batches.py`` (the tests' own generator: one product kind per batch, one planted
spot drawn identically on ``fraction * n`` images, ``--oneoffs`` images with a spot of their own, the rest good).
Per batch the features are extracted once; the same features are scored by exact MuSc (``repeats="off"``) and by
the default repeat-aware scoring (``repeats="exclude"``). Reported, mean and spread over seeds:

- image and pixel AUROC of the repeated defect's images against the good images, and of the one-off images
  against the good images (pixels: those images' pixels, exact masks);
- ``once``: the same defect when it occurs in ONE image of the batch: the batch without its other carriers,
  scored by exact MuSc, the AUROC of that one image against the good ones (image: the share of good images it
  outscores; pixel: its and the good images' pixels), averaged over up to ``--singletons`` carriers;
- patterns found, and false ones (a pattern whose members are not mostly the repeated defect's images; on a
  batch without repeats every pattern is false), carriers named, and other images (good or one-off) taken into a
  pattern.

Timing (``--timing``): the scoring stage alone on precomputed features of a batch with 25 % repeats and of one
without: exact MuSc (:func:`musc_patch_scores`) against the repeat-aware scoring (:func:`repeat_aware_scores`,
which runs the same mutual scoring plus burnout curves, candidates, their rows and the re-scoring); the best of
``--timing-repeat`` interleaved runs each. Progress on stderr; Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

import zsad
from zsad.methods.musc import MuscFeatures, concat_features
from zsad.methods.musc import repeats as repeats_module
from zsad.methods.musc.burnout import BurnoutCurves
from zsad.methods.musc.msm import musc_patch_scores
from zsad.methods.musc.repeats import repeat_aware_scores

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from repeat_batches import Batch, make_batch  # noqa: E402  (the tests' generator: one copy)

MODES = ("off", "exclude")


@dataclass
class Scored:
    """One scoring of a batch: image scores, full-size maps and the patterns found (member index tuples)."""

    scores: np.ndarray
    maps: list[np.ndarray]
    patterns: list[tuple[int, ...]]


def extract(method, batch: Batch, chunk: int = 8) -> MuscFeatures:
    """The batch's MuSc features, once (both scorings read the same)."""
    images = batch.images
    return concat_features([method.extract(method.backbone.preprocess(images[i : i + chunk]))
                            for i in range(0, len(images), chunk)])


def subset(features: MuscFeatures, keep: list[int]) -> MuscFeatures:
    return MuscFeatures(layers=[t[keep] for t in features.layers], pooled=features.pooled[keep])


def score(method, features: MuscFeatures, size: int) -> Scored:
    n = features.pooled.shape[0]
    outs = list(method.raw_joint(features, [(size, size)] * n))
    patterns: dict[str, list[int]] = {}
    for i, out in enumerate(outs):
        if out.extras.get("repeat_pattern"):
            patterns.setdefault(out.extras["repeat_pattern"], []).append(i)
    return Scored(np.asarray([o.image_score for o in outs]), [np.asarray(o.anomaly_map) for o in outs],
                  [tuple(v) for v in patterns.values()])


def aurocs(batch: Batch, scored: Scored, positives: list[int], goods: list[int],
           items: list[int] | None = None) -> tuple[float, float]:
    """Image and pixel AUROC of ``positives`` against ``goods`` (indices into ``scored``; ``items``: the batch items
    they are, when ``scored`` is of a subset)."""
    items = items if items is not None else list(range(len(batch.items)))
    idx = positives + goods
    labels = [1] * len(positives) + [0] * len(goods)
    image = roc_auc_score(labels, scored.scores[idx])
    pixel = roc_auc_score(np.concatenate([batch.items[items[i]].mask.ravel() for i in idx]),
                          np.concatenate([scored.maps[i].ravel() for i in idx]))
    return float(image), float(pixel)


def false_patterns(batch: Batch, patterns: list[tuple[int, ...]]) -> int:
    repeat = set(batch.indices("repeat"))
    return sum(1 for p in patterns if 2 * len(repeat.intersection(p)) <= len(p))


def once(method, batch: Batch, features: MuscFeatures, size: int, limit: int) -> tuple[float, float]:
    """Mean image and pixel AUROC of the repeated defect when it occurs in one image (module doc)."""
    carriers = batch.indices("repeat")
    picked = carriers[:: max(1, len(carriers) // limit)][:limit]
    image, pixel = [], []
    for c in picked:
        keep = [i for i in range(len(batch.items)) if batch.items[i].role != "repeat" or i == c]
        scored = score(method, subset(features, keep), size)
        goods = [j for j, i in enumerate(keep) if batch.items[i].role == "good"]
        a, b = aurocs(batch, scored, [keep.index(c)], goods, keep)
        image.append(a)
        pixel.append(b)
    return float(np.mean(image)), float(np.mean(pixel))


def evaluate(args, methods: dict, size: int) -> list[dict]:
    rows = []
    cases = [(k, f, s) for k in args.kinds for f in args.fractions for s in args.seeds]
    for kind, fraction, seed in tqdm(cases, desc="batches", file=sys.stderr):
        batch = make_batch(args.n, fraction, kind=kind, oneoffs=args.oneoffs, size=size, seed=seed)
        features = extract(methods["off"], batch)
        goods, oneoffs, repeats = batch.indices("good"), batch.indices("oneoff"), batch.indices("repeat")
        row = {"kind": kind, "fraction": fraction, "seed": seed, "repeats": len(repeats)}
        for mode in MODES:
            scored = score(methods[mode], features, size)
            row[f"{mode}_oneoff"] = aurocs(batch, scored, oneoffs, goods)
            row[f"{mode}_defects"] = aurocs(batch, scored, oneoffs + repeats, goods)
            if repeats:
                row[f"{mode}_repeat"] = aurocs(batch, scored, repeats, goods)
            row[f"{mode}_patterns"] = len(scored.patterns)
            row[f"{mode}_false"] = false_patterns(batch, scored.patterns)
            row[f"{mode}_named"] = sum(len(set(p) & set(repeats)) for p in scored.patterns)
            row[f"{mode}_others"] = sum(len(set(p) - set(repeats)) for p in scored.patterns)
        if repeats:
            row["once"] = once(methods["off"], batch, features, size, args.singletons)
        rows.append(row)
    return rows


def _stat(values: list[float]) -> str:
    if not values:
        return "–"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {spread:.3f}"


def _pair(group: list[dict], key: str) -> str:
    """"image / pixel" mean and spread of ``key`` over the batches of ``group`` that have it."""
    have = [r[key] for r in group if key in r]
    return f"{_stat([h[0] for h in have])} / {_stat([h[1] for h in have])}" if have else "–"


def report(rows: list[dict]) -> str:
    lines = ["| kind | repeats | once (img / pix) | musc repeat (img / pix) | exclude repeat (img / pix) | "
             "musc one-off (img / pix) | exclude one-off (img / pix) | patterns (false) | carriers named | "
             "other images in patterns |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["kind"], r["fraction"]) for r in rows})
    for kind, fraction in keys:
        group = [r for r in rows if r["kind"] == kind and r["fraction"] == fraction]
        pair = functools.partial(_pair, group)
        found = sum(r["exclude_patterns"] for r in group)
        false = sum(r["exclude_false"] for r in group)
        named = f"{sum(r['exclude_named'] for r in group)}/{sum(r['repeats'] for r in group)}"
        lines.append(f"| {kind} | {fraction:.0%} ({group[0]['repeats']}) | {pair('once')} | {pair('off_repeat')} | "
                     f"{pair('exclude_repeat')} | {pair('off_oneoff')} | {pair('exclude_oneoff')} | "
                     f"{found} ({false}) | {named} | {sum(r.get('exclude_others', 0) for r in group)} |")
    lines += ["", "Largest loss against exact MuSc over every batch (exclude - off; negative = loss):", ""]
    for key in ("oneoff", "defects"):
        for j, what in enumerate(("image", "pixel")):
            clean = [r[f"exclude_{key}"][j] - r[f"off_{key}"][j] for r in rows if r["repeats"] == 0]
            every = [r[f"exclude_{key}"][j] - r[f"off_{key}"][j] for r in rows]
            lines.append(f"- {key} {what} AUROC: worst {min(every):+.4f} over all batches"
                         + (f", worst {min(clean):+.4f} on batches without repeats" if clean else ""))
    for fraction in sorted({r["fraction"] for r in rows if r["repeats"]}):
        gap = [r["exclude_repeat"][0] - r["once"][0] for r in rows if r["fraction"] == fraction]
        lines.append(f"- repeat {fraction:.0%}: exclude image AUROC - once: mean {np.mean(gap):+.4f}, "
                     f"worst {min(gap):+.4f}")
    return "\n".join(lines)


def _best(fn, repeat: int):
    """The fastest of ``repeat`` calls (seconds) and the last call's result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


class _Stages:
    """Times the stages inside one :func:`repeat_aware_scores` call: the mutual scoring it runs (less the burnout
    tables' additions) and everything repeat detection adds (those additions, the curves, candidates, their rows,
    the re-scoring). Measured within the same call, so the ratio holds on a machine whose load drifts."""

    def __init__(self) -> None:
        self.msm = self.add = 0.0

    def __enter__(self) -> _Stages:
        self._saved = repeats_module.musc_patch_scores, BurnoutCurves.add
        msm, add = self._saved

        def timed_msm(*a, **kw):
            start = time.perf_counter()
            try:
                return msm(*a, **kw)
            finally:
                self.msm += time.perf_counter() - start

        def timed_add(curves, table):
            start = time.perf_counter()
            try:
                return add(curves, table)
            finally:
                self.add += time.perf_counter() - start

        repeats_module.musc_patch_scores, BurnoutCurves.add = timed_msm, timed_add
        return self

    def __exit__(self, *exc: object) -> None:
        repeats_module.musc_patch_scores, BurnoutCurves.add = self._saved


def timing(args, method, size: int) -> None:
    """Print the timing table, a row as soon as it is measured (long at N = 200 on a loaded CPU)."""
    print("\n| N | batch | mutual scoring (s) | repeat-aware (s) | extra | patterns | inside one call: mutual "
          "scoring s / repeat detection s (extra) |\n|---|---|---|---|---|---|---|", flush=True)
    cfg = method.config
    for n in tqdm(args.timing, desc="timing", file=sys.stderr):
        for fraction in (0.25, 0.0):
            batch = make_batch(n, fraction, kind="mesh", oneoffs=3, size=size, seed=100 + n)
            layers = extract(method, batch).layers
            kw = dict(rs=cfg.rs, top_fraction=cfg.top_fraction, block=cfg.block, device=method.device)
            musc_patch_scores(layers[:1], **kw)  # warm-up (threads, allocator)
            plain = aware = float("inf")
            inside: list[tuple[float, float]] = []
            for _ in range(args.timing_repeat):  # interleaved: a shared machine's load changes hit both alike
                plain = min(plain, _best(functools.partial(musc_patch_scores, layers, **kw), 1)[0])
                with _Stages() as stages:
                    seconds, found = _best(functools.partial(repeat_aware_scores, layers, mode="exclude", **kw), 1)
                aware = min(aware, seconds)
                inside.append((stages.msm - stages.add, seconds - stages.msm + stages.add))
            patterns = len(found.findings.patterns)
            mutual, extra = min(inside, key=lambda pair: pair[1] / pair[0])
            print(f"| {n} | {fraction:.0%} repeats | {plain:.2f} | {aware:.2f} | {(aware - plain) / plain:+.1%} | "
                  f"{patterns} | {mutual:.2f} / {extra:.2f} ({extra / mutual:+.1%}) |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="tiny-random")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.0, 0.1, 0.25, 0.5])
    ap.add_argument("--kinds", nargs="+", default=["mesh", "washer"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--oneoffs", type=int, default=3)
    ap.add_argument("--singletons", type=int, default=6, help="carriers scored alone for the 'once' reference")
    ap.add_argument("--timing", type=int, nargs="*", default=[50, 200])
    ap.add_argument("--timing-repeat", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="write every batch's numbers here")
    args = ap.parse_args()
    torch.manual_seed(0)
    base = zsad.create("musc", backbone=args.backbone, image_size=args.image_size, device=args.device,
                       warn_random=False, repeats="off")
    methods = {"off": base.method}
    methods["exclude"] = zsad.create("musc", backbone=base.method.backbone, warn_random=False,
                                     repeats="exclude").method
    size = args.image_size
    started = time.perf_counter()
    rows = evaluate(args, methods, size) if args.fractions else []
    if rows:
        print(f"## {args.backbone}, N = {args.n}, seeds {args.seeds}, {args.oneoffs} one-offs per batch "
              f"({time.perf_counter() - started:.0f} s)\n")
        print(report(rows), flush=True)
    if args.timing:
        timing(args, methods["off"], size)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
