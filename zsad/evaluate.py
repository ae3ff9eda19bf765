"""Benchmark evaluation: score every test image of a dataset, per category, and write the standard metrics.

Layout of the output folder::

    OUT/per_image/<category>.csv     path,label,score,defect_type,pred_defect_type (one row per test image)
    OUT/categories/<category>.json   metrics, seconds and n_images of one category (the resume marker)
    OUT/metrics.json                 {"method", "backbone", "aupro_variant", "categories", "mean", "f1_thresholds"}
    OUT/metrics.md                   Markdown table: one row per category and a mean row

Every file is written atomically (temporary file, then ``os.replace``), so an interrupted run leaves
only finished categories behind and ``resume=True`` continues from there.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zsad.errors import BatchTooSmallError, DatasetError, UsageError
from zsad.fileio import atomic_write_text

if TYPE_CHECKING:

    from zsad.data.datasets import Dataset, Sample
    from zsad.detector import Detector
    from zsad.types import AnomalyResult

log = logging.getLogger(__name__)

#: Metric keys, in table order.
METRIC_KEYS: tuple[str, ...] = (
    "image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro",
)
#: Config fields a resumed category must share with the current run.
_SIGNATURE_FIELDS: tuple[str, ...] = ("method", "backbone", "image_size", "aupro_variant", "method_options")


@dataclass(frozen=True)
class EvaluateConfig:
    """What to evaluate and where to write it; see :func:`evaluate`."""

    data: Path
    out: Path
    method: str = "auto"
    backbone: str = "ViT-L-14-336:openai"
    image_size: int = 518
    categories: tuple[str, ...] | None = None
    format: str = "auto"
    aupro_variant: str = "mvtec"
    resume: bool = False
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    class_name_from_category: bool = True
    progress: bool = True
    #: fields of the method's config, as ``zsad.create(**method_options)`` takes them (e.g. ``adapter``, ``prompts``)
    method_options: dict[str, Any] = field(default_factory=dict)

    def signature(self) -> dict[str, Any]:
        """The settings that make two runs' numbers comparable; an adapter counts by its weights' SHA-256, so a
        retrained adapter in the same folder is not mistaken for the old one on ``--resume``."""
        found = {name: getattr(self, name) for name in _SIGNATURE_FIELDS}
        adapter = self.method_options.get("adapter")
        if adapter:
            weights = Path(adapter) / "weights.safetensors"
            found["adapter_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
        return found


@dataclass(frozen=True)
class CategoryResult:
    """Metrics of one category; pixel metrics are None when its anomalous images have no masks.

    ``f1_thresholds`` holds the F1-optimal decision thresholds (``image``, and ``pixel`` with masks): what a
    user with labels would set ``--threshold`` to for this category and method.
    """

    category: str
    metrics: dict[str, float | None]
    seconds: float
    n_images: int
    f1_thresholds: dict[str, float] = field(default_factory=dict)

    def to_dict(self, signature: dict[str, Any]) -> dict[str, Any]:
        return {"category": self.category, "metrics": self.metrics, "f1_thresholds": self.f1_thresholds,
                "seconds": self.seconds, "n_images": self.n_images, "config": signature}


# --------------------------------------------------------------------------- files


def _per_image_csv(samples: Sequence[Sample], results: Sequence[AnomalyResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "score", "defect_type", "pred_defect_type"])
    for sample, result in zip(samples, results):
        writer.writerow([str(sample.image_path), sample.label, f"{result.image_score:.6f}", sample.defect_type,
                         result.defect_type or ""])
    return buffer.getvalue()


def _load_done(path: Path, signature: dict[str, Any]) -> CategoryResult | None:
    """A finished category's result from its JSON file, or None when it must be computed (again); one written
    with another ``signature`` (:meth:`EvaluateConfig.signature`) is a usage error."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        done = CategoryResult(record["category"], dict(record["metrics"]), float(record["seconds"]),
                              int(record["n_images"]), dict(record.get("f1_thresholds", {})))
        stored = record.get("config", {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s); evaluating that category again", path, exc)
        return None
    if stored != signature:
        raise UsageError(f"cannot resume: {path} was written with {stored}, this run uses {signature}; "
                         f"choose another --out or drop --resume")
    return done


# --------------------------------------------------------------------------- scoring


def _bar(total: int, desc: str, enabled: bool, unit: str = "img", leave: bool = False):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=leave, disable=not enabled)


def _score_category(detector: Detector, category: str, samples: Sequence[Sample],
                    batch_size: int, progress: bool) -> list[AnomalyResult]:
    """Score one category's test images. Transductive methods score the whole category jointly
    (features are extracted chunk by chunk, so decoded images are not all kept in memory)."""
    from zsad.data.images import load_image

    method = detector.method
    paths = [str(s.image_path) for s in samples]
    with _bar(len(samples), category, progress) as bar:
        if method.transductive:
            chunks, sizes = [], []
            for start in range(0, len(samples), batch_size):
                images = [load_image(s.image_path) for s in samples[start:start + batch_size]]
                chunks.append(detector.extract_chunk(images))
                sizes += [img.size for img in images]
                bar.update(len(images))
            try:
                return list(detector.joint_results(chunks, sizes, paths))
            except BatchTooSmallError as exc:
                raise BatchTooSmallError(f"category '{category}': {exc}") from exc
        results: list[AnomalyResult] = []
        for start in range(0, len(samples), batch_size):
            images = [load_image(s.image_path) for s in samples[start:start + batch_size]]
            results.extend(detector.score_images(images, paths[start:start + batch_size]))
            bar.update(len(images))
        return results


def _category_metrics(category: str, samples: Sequence[Sample], results: Sequence[AnomalyResult],
                      aupro_variant: str) -> tuple[dict[str, float | None], dict[str, float]]:
    """All metrics at each image's original resolution; pixel metrics only when every anomalous image has a mask."""
    from zsad.data.datasets import load_mask
    from zsad.metrics import compute_all

    scores = np.array([r.image_score for r in results], dtype=np.float64)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    has_masks = all(s.mask_path is not None for s in samples if s.label == 1)
    maps = masks = None
    if has_masks:
        maps = [r.anomaly_map for r in results]
        masks = [load_mask(s.mask_path, r.size, s.image_path) for s, r in zip(samples, results)]
    else:
        log.warning("category %s: some anomalous images have no mask; pixel metrics are skipped", category)
    try:
        found = compute_all(scores, labels, maps, masks, aupro_variant=aupro_variant, with_thresholds=True)
    except UsageError as exc:
        raise DatasetError(f"category '{category}': {exc}") from None
    thresholds = {kind: float(found[f"{kind}_f1_threshold"]) for kind in ("image", "pixel")
                  if f"{kind}_f1_threshold" in found}
    return {key: (float(found[key]) if key in found else None) for key in METRIC_KEYS}, thresholds


# --------------------------------------------------------------------------- summary


def _mean(results: Sequence[CategoryResult]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in METRIC_KEYS:
        values = [r.metrics.get(key) for r in results]
        present = [v for v in values if v is not None and not math.isnan(v)]
        out[key] = float(np.mean(present)) if present else None
    return out


def metrics_markdown(summary: dict[str, Any]) -> str:
    """The Markdown table of a ``metrics.json`` summary: one row per category, then the mean row."""
    headers = [f"aupro ({summary['aupro_variant']})" if k == "aupro" else k for k in METRIC_KEYS]

    def row(name: str, metrics: dict[str, float | None]) -> str:
        cells = ["-" if metrics.get(k) is None else f"{metrics[k]:.3f}" for k in METRIC_KEYS]
        return "| " + " | ".join([name, *cells]) + " |"

    lines = [
        f"Method `{summary['method']}`, backbone `{summary['backbone']}`, "
        f"AUPRO variant `{summary['aupro_variant']}` (values in [0, 1]).",
        "",
        "| category | " + " | ".join(headers) + " |",
        "|" + "---|" * (len(headers) + 1),
    ]
    lines += [row(name, metrics) for name, metrics in summary["categories"].items()]
    lines.append(row("**mean**", summary["mean"]))
    thresholds = summary.get("f1_thresholds") or {}
    if any(thresholds.values()):
        lines += ["", "F1-optimal thresholds (`--threshold` that reaches `image_f1_max` / `pixel_f1_max`):", "",
                  "| category | image | pixel |", "|---|---|---|"]
        lines += [f"| {name} | " + " | ".join("-" if t.get(k) is None else f"{t[k]:.4f}" for k in ("image", "pixel"))
                  + " |" for name, t in thresholds.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry points


def _check_config(config: EvaluateConfig) -> None:
    from zsad.metrics import AUPRO_VARIANTS

    if config.aupro_variant not in AUPRO_VARIANTS:
        raise UsageError(f"unknown AUPRO variant {config.aupro_variant!r}; choose one of {', '.join(AUPRO_VARIANTS)}")
    if config.batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {config.batch_size}")
    if config.categories is not None and not config.categories:
        raise UsageError("no categories given; leave categories out to evaluate every category")


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate ``config.method`` on every chosen category of ``config.data``; returns the ``metrics.json`` dict.

    The detector is built only if some category still needs scoring (a fully resumed run loads no model).
    """
    import zsad
    from zsad.data.datasets import open_dataset

    _check_config(config)
    dataset: Dataset = open_dataset(config.data, format=config.format, categories=config.categories)
    out = Path(config.out)
    signature = config.signature()  # once: it hashes the adapter's weights
    detector: Detector | None = None
    finished: list[CategoryResult] = []
    with _bar(len(dataset.categories), "categories", config.progress, unit="cat", leave=True) as bar:
        for category in dataset.categories:
            marker = out / "categories" / f"{category}.json"
            done = _load_done(marker, signature) if config.resume else None
            if done is not None:
                log.info("category %s already evaluated; reusing %s", category, marker)
                finished.append(done)
                bar.update(1)
                continue
            samples = dataset.samples(category, "test")
            if not samples:
                raise DatasetError(f"category '{category}' has no test images in {dataset.root}")
            if detector is None:
                detector = zsad.create(config.method, backbone=config.backbone, image_size=config.image_size,
                                       device=config.device, precision=config.precision,
                                       batch_size=config.batch_size, warn_random=False, **config.method_options)
            detector.setup(category.replace("_", " ") if config.class_name_from_category else None)
            started = time.perf_counter()
            results = _score_category(detector, category, samples, config.batch_size, config.progress)
            seconds = time.perf_counter() - started
            metrics, thresholds = _category_metrics(category, samples, results, config.aupro_variant)
            result = CategoryResult(category, metrics, seconds, len(samples), thresholds)
            atomic_write_text(out / "per_image" / f"{category}.csv", _per_image_csv(samples, results))
            atomic_write_text(marker, json.dumps(result.to_dict(signature), indent=2) + "\n")
            finished.append(result)
            bar.set_postfix(last=category)
            bar.update(1)
    summary = {
        "method": config.method,
        "backbone": config.backbone,
        "aupro_variant": config.aupro_variant,
        "categories": {r.category: r.metrics for r in finished},
        "mean": _mean(finished),
        "f1_thresholds": {r.category: r.f1_thresholds for r in finished},
    }
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "metrics.md", metrics_markdown(summary))
    return summary


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to the ``zsad`` command line."""
    from zsad.backbones.names import DEFAULT_BACKBONE
    from zsad.data.datasets import FORMATS
    from zsad.methods import list_methods
    from zsad.metrics.pro import AUPRO_VARIANTS

    p = subparsers.add_parser("evaluate", help="benchmark a method on a dataset: image/pixel AUROC, AP, F1-max, AUPRO")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root (MVTec AD, VisA, MPDD, BTAD, ...)")
    p.add_argument("--method", default="auto", choices=list_methods(), help="method to evaluate (default auto)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"backbone (default {DEFAULT_BACKBONE})")
    p.add_argument("--image-size", type=int, default=518, help="squash-resize size (default 518)")
    p.add_argument("--categories", default=None, help="comma-separated categories (default: all)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="dataset layout (default auto)")
    p.add_argument("--out", default="zsad-eval", help="output folder (default zsad-eval)")
    p.add_argument("--resume", action="store_true", help="reuse categories already finished in OUT")
    p.add_argument("--aupro-variant", default="mvtec", choices=list(AUPRO_VARIANTS),
                   help="AUPRO integration convention (default mvtec)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="compute precision (default: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--prompts", default=None, help="a prompt-bank YAML replacing bundled sections (clip method)")
    p.add_argument("--adapter", default=None, help="a learned-prompt adapter folder (anomalyclip method)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)
    return p


def _parse_categories(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise UsageError("--categories is empty; leave it out to evaluate every category")
    return names


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``zsad evaluate``: run :func:`evaluate` and print the Markdown table to stdout."""
    config = EvaluateConfig(
        data=Path(args.data), out=Path(args.out), method=args.method, backbone=args.backbone,
        image_size=args.image_size, categories=_parse_categories(args.categories), format=args.format,
        aupro_variant=args.aupro_variant, resume=args.resume, device=args.device, precision=args.precision,
        batch_size=args.batch_size, progress=not getattr(args, "quiet", False),
        method_options={k: v for k, v in (("prompts", args.prompts), ("adapter", args.adapter)) if v},
    )
    summary = evaluate(config)
    print(metrics_markdown(summary), end="")
    print(f"zsad: wrote {Path(args.out) / 'metrics.json'}", file=sys.stderr)
    return 0
