"""Benchmark evaluation: score every test image of a dataset, per category, and write the standard metrics.

Layout of the output folder::

    OUT/per_image/<category>.csv     path,label,score,defect_type,pred_defect_type,error (one row per test image)
    OUT/categories/<category>.json   metrics, seconds, n_images and n_failed of one category (the resume marker)
    OUT/metrics.json                 {"method", "backbone", "aupro_variant", "categories", "mean", "f1_thresholds",
                                      "n_failed"}
    OUT/metrics.md                   Markdown table: one row per category and a mean row

Every file is written atomically (temporary file, then ``os.replace``), so an interrupted run leaves
only finished categories behind and ``resume=True`` continues from there. A test image that cannot be read (or
whose numbers are NaN/inf) is a per-image row with ``error`` set: it is left out of the metrics and counted in
``n_failed``. Each marker records the run's signature (:func:`run_signature`: the resolved data root, the format,
the method and its options, the prompt file's contents, the adapter's settings and weights); resuming with another
signature is refused with a message naming what changed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zsad.errors import BatchTooSmallError, DatasetError, UsageError
from zsad.fileio import atomic_write_text, read_json

if TYPE_CHECKING:

    from zsad.data.datasets import Dataset, Sample
    from zsad.detector import Detector
    from zsad.runner import Outcome

log = logging.getLogger(__name__)

#: Metric keys, in table order.
METRIC_KEYS: tuple[str, ...] = (
    "image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro",
)
#: Config fields a resumed category must share with the current run (besides the data and file contents).
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
    overwrite: bool = False
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    class_name_from_category: bool = True
    progress: bool = True
    #: fields of the method's config, as ``zsad.create(**method_options)`` takes them (e.g. ``adapter``, ``prompts``)
    method_options: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def run_signature(config: EvaluateConfig, dataset: Dataset) -> dict[str, Any]:
    """The settings that make two runs' numbers comparable: the resolved data root and detected format, the method,
    backbone, input size, AUPRO variant and method options, the prompt file's contents, and the adapter's settings
    (``adapter.json``) and weights — so an edited prompt file or a retrained adapter in the same folder is never
    mistaken for the old one on ``--resume``."""
    found: dict[str, Any] = {name: getattr(config, name) for name in _SIGNATURE_FIELDS}
    found["method_options"] = {k: str(v) for k, v in sorted(config.method_options.items())}
    found["data"] = str(Path(dataset.root).resolve())
    found["format"] = dataset.format
    prompts = config.method_options.get("prompts")
    if prompts:
        found["prompts_sha256"] = _sha256(Path(prompts))
    adapter = config.method_options.get("adapter")
    if adapter:
        settings = Path(adapter) / "adapter.json"
        found["adapter_settings"] = read_json(settings, UsageError, "adapter settings") if settings.is_file() else None
        found["adapter_sha256"] = _sha256(Path(adapter) / "weights.safetensors")
    return found


def _changes(stored: dict[str, Any], current: dict[str, Any]) -> str:
    """What differs between two signatures, in words: ``key: old -> new`` for each changed key."""
    parts = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key, "(not recorded)"), current.get(key, "(not recorded)")
        if old != new:
            if key.endswith("sha256") or key == "adapter_settings":
                parts.append(f"{key.replace('_sha256', '')} changed")
            else:
                parts.append(f"{key}: {old!r} -> {new!r}")
    return "; ".join(parts)


@dataclass(frozen=True)
class CategoryResult:
    """Metrics of one category; pixel metrics are None when its anomalous images have no masks.

    ``f1_thresholds`` holds the F1-optimal decision thresholds (``image``, and ``pixel`` with masks): what a
    user with labels would set ``--threshold`` to for this category and method. ``n_failed`` test images could not
    be scored and are not in the metrics.
    """

    category: str
    metrics: dict[str, float | None]
    seconds: float
    n_images: int
    f1_thresholds: dict[str, float] = field(default_factory=dict)
    n_failed: int = 0

    def to_dict(self, signature: dict[str, Any]) -> dict[str, Any]:
        return {"category": self.category, "metrics": self.metrics, "f1_thresholds": self.f1_thresholds,
                "seconds": self.seconds, "n_images": self.n_images, "n_failed": self.n_failed, "config": signature}


# --------------------------------------------------------------------------- files


def _per_image_csv(samples: Sequence[Sample], outcomes: Sequence[Outcome]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "score", "defect_type", "pred_defect_type", "error"])
    for sample, outcome in zip(samples, outcomes):
        result = outcome.result
        writer.writerow([str(sample.image_path), sample.label, f"{result.image_score:.6f}" if result else "",
                         sample.defect_type, (result.defect_type or "") if result else "", outcome.error or ""])
    return buffer.getvalue()


def _load_done(path: Path, signature: dict[str, Any]) -> CategoryResult | None:
    """A finished category's result from its JSON file, or None when it must be computed (again); one written
    with another ``signature`` (:func:`run_signature`) is a usage error naming what changed."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        done = CategoryResult(record["category"], dict(record["metrics"]), float(record["seconds"]),
                              int(record["n_images"]), dict(record.get("f1_thresholds", {})),
                              int(record.get("n_failed", 0)))
        stored = record.get("config", {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s); evaluating that category again", path, exc)
        return None
    if stored != signature:
        raise UsageError(f"cannot resume: {path} was written with other settings ({_changes(stored, signature)}); "
                         f"use --overwrite to start afresh, or another --out")
    return done


# --------------------------------------------------------------------------- scoring


def _bar(total: int, desc: str, enabled: bool, unit: str = "img", leave: bool = False):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=leave, disable=not enabled)


def _score_category(detector: Detector, category: str, samples: Sequence[Sample], progress: bool) -> list[Outcome]:
    """One outcome per test image, in order, through the runner (transductive methods score the category
    jointly). An unreadable image is an error outcome and stays out of the joint batch."""
    from zsad.runner import Source

    sources = [Source.from_file(s.image_path) for s in samples]
    by_key: dict[str, Outcome] = {}
    with _bar(len(samples), category, progress) as bar:
        try:
            for outcome in detector.runner().run(sources, progress=bar.update):
                by_key[outcome.source.key] = outcome
        except BatchTooSmallError as exc:
            raise BatchTooSmallError(f"category '{category}': {exc}") from exc
    return [by_key[s.key] for s in sources]


def _category_metrics(category: str, samples: Sequence[Sample], outcomes: Sequence[Outcome],
                      aupro_variant: str) -> tuple[dict[str, float | None], dict[str, float]]:
    """All metrics at each image's original resolution over the scored images; pixel metrics only when every
    anomalous image has a mask."""
    from zsad.data.datasets import load_mask
    from zsad.metrics import compute_all

    pairs = [(s, o.result) for s, o in zip(samples, outcomes) if o.result is not None]
    if not pairs:
        raise DatasetError(f"category '{category}': none of its {len(samples)} test images could be scored")
    samples, results = [s for s, _ in pairs], [r for _, r in pairs]

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
    if config.resume and config.overwrite:
        raise UsageError("--resume and --overwrite exclude each other: resume keeps finished categories, overwrite "
                         "starts afresh")


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate ``config.method`` on every chosen category of ``config.data``; returns the ``metrics.json`` dict.

    The detector is built only if some category still needs scoring (a fully resumed run loads no model).
    """
    import zsad
    from zsad.data.datasets import open_dataset

    _check_config(config)
    dataset: Dataset = open_dataset(config.data, format=config.format, categories=config.categories)
    out = Path(config.out)
    signature = run_signature(config, dataset)  # once: it hashes the adapter's weights
    if config.overwrite:
        for folder in ("categories", "per_image"):
            shutil.rmtree(out / folder, ignore_errors=True)
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
            outcomes = _score_category(detector, category, samples, config.progress)
            seconds = time.perf_counter() - started
            failed = [o for o in outcomes if o.error is not None]
            for outcome in failed:
                log.warning("category %s: %s: %s", category, outcome.source.label, outcome.error)
            atomic_write_text(out / "per_image" / f"{category}.csv", _per_image_csv(samples, outcomes))
            metrics, thresholds = _category_metrics(category, samples, outcomes, config.aupro_variant)
            result = CategoryResult(category, metrics, seconds, len(samples), thresholds, len(failed))
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
        "n_failed": {r.category: r.n_failed for r in finished},
    }
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "metrics.md", metrics_markdown(summary))
    return summary
