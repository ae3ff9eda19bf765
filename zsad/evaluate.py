"""Benchmark evaluation: score every test image of a dataset, per category, and write the standard metrics.

Layout of the output folder::

    OUT/per_image/<category>.csv     one row per test image (columns below)
    OUT/categories/<category>.json   metrics, seconds, n_images and n_failed of one category (the resume marker)
    OUT/metrics.json                 {"method", "backbone", "activation", "aupro_variant", "categories", "mean",
                                      "f1_thresholds", "n_failed", "aupimo", "defect_types", "defect_type_naming"}
    OUT/metrics.md                   Markdown tables: one row per category and a mean row, then AUPIMO, the
                                     per-defect-type breakdown and the defect-type naming scores

Per-image columns: ``path, label, score`` (image score), ``defect_type`` (the dataset's), ``pred_defect_type``
(the type zsad names for an image it flags anomalous, else empty), ``error``, then ``aupimo`` (empty for normal
images and without masks), ``top_defect_type`` (the most likely type of ``defect_probs``, whatever the decision)
and ``mapped_defect_type`` (the dataset's type in zsad's vocabulary through ``prompts/defect_type_map.yaml``;
empty when unmapped).

``metrics.json`` beyond the per-category and mean metrics (``aupimo`` there is the category's mean AUPIMO):
``aupimo`` = ``{"fpr_bounds", "categories": {cat: stats}, "overall": stats}`` with stats ``mean, q1, median, q3,
n_images, n_undefined`` (overall pools every image); ``defect_types`` = ``{cat: {type: {n_images, image_auroc,
pixel_auroc, aupro, aupimo}}}`` for categories whose dataset names types; ``defect_type_naming`` =
``{"categories": {cat: {accuracy, macro_f1, n_images, types, mapping, unmapped}}, "overall": ...}`` when the method
names defect types (``top_defect_type`` against ``mapped_defect_type`` over the anomalous images with a mapped type).

Every file is written atomically (temporary file, then ``os.replace``), so an interrupted run leaves
only finished categories behind and ``resume=True`` continues from there. A test image that cannot be read (or
whose numbers are NaN/inf) is a per-image row with ``error`` set: it is left out of the metrics and counted in
``n_failed``. Each marker records the run's signature (:func:`run_signature`: the resolved data root, the format,
the method and its options, the prompt file's contents, the adapter's settings and weights); resuming with another
signature is refused with a message naming what changed.
"""

from __future__ import annotations

import csv
import functools
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

from zsad.distributed import Dist, assign_groups
from zsad.errors import BatchTooSmallError, DatasetError, UsageError
from zsad.fileio import atomic_write_text, read_json

if TYPE_CHECKING:

    from zsad.data.datasets import Dataset, Sample
    from zsad.detector import Detector
    from zsad.metrics.type_map import TypeMap
    from zsad.runner import Outcome

log = logging.getLogger(__name__)

#: Metric keys, in table order.
METRIC_KEYS: tuple[str, ...] = (
    "image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro", "aupimo",
)
#: Config fields a resumed category must share with the current run (besides the data and file contents).
_SIGNATURE_FIELDS: tuple[str, ...] = ("method", "backbone", "image_size", "aupro_variant", "aupimo_fpr_bounds",
                                      "method_options")
#: The paper's AUPIMO integration range (= ``zsad.metrics.aupimo.DEFAULT_FPR_BOUNDS``; not imported: that pulls in
#: scikit-learn at import time).
AUPIMO_FPR_BOUNDS: tuple[float, float] = (1e-5, 1e-4)


@dataclass(frozen=True)
class EvaluateConfig:
    """What to evaluate and where to write it; see :func:`evaluate`."""

    data: Path
    out: Path
    method: str = "auto"
    backbone: str = "ViT-L-14-336:openai"
    image_size: int = 518
    #: the backbone's MLP activation: ``gelu``, ``quick_gelu`` or ``auto`` (:func:`zsad.detector.resolve_activation`)
    activation: str = "auto"
    categories: tuple[str, ...] | None = None
    format: str = "auto"
    aupro_variant: str = "mvtec"
    aupimo_fpr_bounds: tuple[float, float] = AUPIMO_FPR_BOUNDS
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    class_name_from_category: bool = True
    progress: bool = True
    #: fields of the method's config, as ``zsad.create(**method_options)`` takes them (e.g. ``adapter``, ``prompts``)
    method_options: dict[str, Any] = field(default_factory=dict)
    #: few-shot: score each category against this many normal train images drawn with ``reference_seed``
    #: (:mod:`zsad.methods.reference`); None = zero-shot
    reference_shots: int | None = None
    reference_seed: int = 0
    #: how the shots are chosen (:mod:`zsad.methods.reference.shots`): ``slice`` (AnomalyDINO's protocol) or ``random``
    reference_draw: str = "slice"
    #: ``anomalib``: also compute image/pixel AUROC, AUPRO and AUPIMO with anomalib's metric classes on the same
    #: maps (:mod:`zsad.metrics.anomalib_backend`), stored as ``anomalib_*`` keys next to zsad's
    metrics_backend: str = "zsad"


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def run_signature(config: EvaluateConfig, dataset: Dataset) -> dict[str, Any]:
    """The settings that make two runs' numbers comparable: the resolved data root and detected format, the method,
    backbone, resolved MLP activation, input size, AUPRO variant, AUPIMO FPR bounds and method options, the prompt
    file's contents, the defect-type map's contents, and the adapter's settings (``adapter.json``) and weights — so
    an edited prompt file or a retrained adapter in the same folder is never mistaken for the old one on
    ``--resume``."""
    from zsad.metrics.type_map import sha256_of_bundled

    found: dict[str, Any] = {name: getattr(config, name) for name in _SIGNATURE_FIELDS}
    found["aupimo_fpr_bounds"] = [float(b) for b in config.aupimo_fpr_bounds]  # a list, as JSON reads it back
    found["method_options"] = {k: str(v) for k, v in sorted(config.method_options.items())}
    found["activation"] = _activation(config)  # resolved: what ran, not "auto"
    found["type_map_sha256"] = sha256_of_bundled()
    found["data"] = str(Path(dataset.root).resolve())
    found["format"] = dataset.format
    if config.reference_shots:  # recorded only when set, so zero-shot runs keep their old signature
        found["reference_shots"], found["reference_seed"] = config.reference_shots, config.reference_seed
        found["reference_draw"] = config.reference_draw
    if config.metrics_backend != "zsad":  # likewise
        found["metrics_backend"] = config.metrics_backend
    prompts = config.method_options.get("prompts")
    if prompts:
        found["prompts_sha256"] = _sha256(Path(prompts))
    adapter = config.method_options.get("adapter")
    if adapter:
        settings = Path(adapter) / "adapter.json"
        found["adapter_settings"] = read_json(settings, UsageError, "adapter settings") if settings.is_file() else None
        found["adapter_sha256"] = _sha256(Path(adapter) / "weights.safetensors")
    return found


def _method_options(config: EvaluateConfig) -> dict[str, Any]:
    """The options the detector is built with: the configured ones; few-shot scorers with a choice of search run
    the exhaustive one unless another is asked (AnomalyDINO's published numbers come from an exact search)."""
    import dataclasses

    from zsad.methods import method_class

    options = dict(config.method_options)
    scorer = method_class(config.method).reference_scorer if config.reference_shots else None
    if scorer is not None and "search" in {f.name for f in dataclasses.fields(scorer.config_class)}:
        options.setdefault("search", "exact")
    return options


def _activation(config: EvaluateConfig) -> str:
    from zsad.detector import resolve_activation

    if config.reference_shots:  # scored against references: the scorer's activation (MuSc's for the MuSc bank)
        from zsad.methods import method_class
        from zsad.methods.reference import ReferenceMethod

        scorer = method_class(config.method).reference_scorer or ReferenceMethod
        return resolve_activation(scorer, config.backbone, config.image_size, config.activation)
    return resolve_activation(config.method, config.backbone, config.image_size, config.activation)


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
    be scored and are not in the metrics. ``aupimo`` holds the AUPIMO statistics, ``defect_types`` the per-type
    breakdown and ``type_naming`` the defect-type naming scores (each empty when not defined for the category);
    ``aupimo_values`` (per scored image, None = undefined) and ``type_pairs`` ([mapped true type, named type] per
    anomalous image) let the run pool every category into the overall figures, also after a resume.
    """

    category: str
    metrics: dict[str, float | None]
    seconds: float
    n_images: int
    f1_thresholds: dict[str, float] = field(default_factory=dict)
    n_failed: int = 0
    aupimo: dict[str, Any] = field(default_factory=dict)
    defect_types: dict[str, Any] = field(default_factory=dict)
    type_naming: dict[str, Any] = field(default_factory=dict)
    aupimo_values: list[float | None] = field(default_factory=list)
    type_pairs: list[list[str]] = field(default_factory=list)

    def to_dict(self, signature: dict[str, Any]) -> dict[str, Any]:
        return {"category": self.category, "metrics": self.metrics, "f1_thresholds": self.f1_thresholds,
                "seconds": self.seconds, "n_images": self.n_images, "n_failed": self.n_failed,
                "aupimo": self.aupimo, "defect_types": self.defect_types, "type_naming": self.type_naming,
                "aupimo_values": self.aupimo_values, "type_pairs": self.type_pairs, "config": signature}


@dataclass
class _Found:
    """What :func:`_category_metrics` computes: the CategoryResult fields, and the per-image columns of the CSV."""

    metrics: dict[str, float | None]
    thresholds: dict[str, float]
    aupimo: dict[str, Any] = field(default_factory=dict)
    defect_types: dict[str, Any] = field(default_factory=dict)
    type_naming: dict[str, Any] = field(default_factory=dict)
    type_pairs: list[list[str]] = field(default_factory=list)
    aupimo_values: list[float | None] = field(default_factory=list)  # scored images only
    #: per test image, in the samples' order (failed images too): the extra CSV columns
    aupimo_column: list[float | None] = field(default_factory=list)
    top_types: list[str] = field(default_factory=list)
    mapped_types: list[str] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        """Keyword arguments of :class:`CategoryResult`."""
        return {"metrics": self.metrics, "f1_thresholds": self.thresholds, "aupimo": self.aupimo,
                "defect_types": self.defect_types, "type_naming": self.type_naming, "type_pairs": self.type_pairs,
                "aupimo_values": self.aupimo_values}


# --------------------------------------------------------------------------- files


def _per_image_csv(samples: Sequence[Sample], outcomes: Sequence[Outcome], found: _Found | None = None) -> str:
    """The per-image table; without ``found`` (metrics not computed yet) the metric columns are empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "gt_label", "score", "gt_defect_type", "pred_defect_type", "error", "aupimo",
                     "top_defect_type", "mapped_defect_type"])
    n = len(samples)
    aupimo = found.aupimo_column if found and found.aupimo_column else [None] * n
    top = found.top_types if found and found.top_types else [""] * n
    mapped = found.mapped_types if found and found.mapped_types else [""] * n
    for sample, outcome, value, top_type, mapped_type in zip(samples, outcomes, aupimo, top, mapped):
        result = outcome.result
        writer.writerow([str(sample.image_path), sample.label, f"{result.image_score:.6f}" if result else "",
                         sample.defect_type, (result.defect_type or "") if result else "", outcome.error or "",
                         "" if value is None else f"{value:.6f}", top_type, mapped_type])
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
                              int(record.get("n_failed", 0)), dict(record.get("aupimo", {})),
                              dict(record.get("defect_types", {})), dict(record.get("type_naming", {})),
                              list(record.get("aupimo_values", [])), list(record.get("type_pairs", [])))
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
                      config: EvaluateConfig) -> _Found:
    """All metrics at each image's original resolution over the scored images; pixel metrics (AUPIMO included)
    only when every anomalous image has a mask; the per-type breakdown when the dataset names types."""
    from zsad.data.datasets import load_mask
    from zsad.metrics import compute_all, per_type_metrics

    scored = [i for i, o in enumerate(outcomes) if o.result is not None]
    if not scored:
        raise DatasetError(f"category '{category}': none of its {len(samples)} test images could be scored")
    kept = [samples[i] for i in scored]
    results = [outcomes[i].result for i in scored]

    scores = np.array([r.image_score for r in results], dtype=np.float64)
    labels = np.array([s.label for s in kept], dtype=np.int64)
    has_masks = all(s.mask_path is not None for s in kept if s.label == 1)
    maps = masks = None
    if has_masks:
        maps = [r.anomaly_map for r in results]
        masks = [load_mask(s.mask_path, r.size, s.image_path) for s, r in zip(kept, results)]
    else:
        log.warning("category %s: some anomalous images have no mask; pixel metrics are skipped", category)
    try:
        found = compute_all(scores, labels, maps, masks, aupro_variant=config.aupro_variant, with_thresholds=True,
                            aupimo_fpr_bounds=None)
    except UsageError as exc:
        raise DatasetError(f"category '{category}': {exc}") from None
    thresholds = {kind: float(found[f"{kind}_f1_threshold"]) for kind in ("image", "pixel")
                  if f"{kind}_f1_threshold" in found}
    out = _Found({key: (float(found[key]) if key in found else None) for key in METRIC_KEYS}, thresholds)

    values = _aupimo_values(category, labels, maps, masks, config.aupimo_fpr_bounds, out) if has_masks else None
    column: list[float | None] = [None] * len(samples)
    if values is not None:
        out.aupimo_values = [None if math.isnan(v) else float(v) for v in values]
        for i, v in zip(scored, out.aupimo_values):
            column[i] = v
    out.aupimo_column = column

    type_map, vocabulary = _type_map(config)
    kinds = [s.defect_type for s in kept]
    if any(not type_map.is_unnamed(k) for k, y in zip(kinds, labels) if y):
        out.defect_types = per_type_metrics(kinds, scores, labels, maps, masks, config.aupro_variant, values)
    _type_naming(samples, outcomes, type_map, vocabulary, out)
    if config.metrics_backend == "anomalib":
        from zsad.metrics.anomalib_backend import anomalib_metrics

        backend = anomalib_metrics(scores, labels, maps, masks, aupimo_fpr_bounds=config.aupimo_fpr_bounds)
        for note in backend.notes:
            log.warning("category %s: %s", category, note)
        out.metrics.update(backend.prefixed())
    return out


def _aupimo_values(category: str, labels: np.ndarray, maps: list[np.ndarray], masks: list[np.ndarray],
                   bounds: Sequence[float], out: _Found) -> np.ndarray | None:
    """Per-image AUPIMO of the scored images (NaN = undefined); fills ``out.aupimo`` and the mean metric.

    Normal images are those labelled normal; an image labelled anomalous whose mask is empty is left out (its
    pixels are not known to be normal) and counts as undefined.
    """
    from zsad.metrics import aupimo, aupimo_stats

    values = np.full(len(maps), np.nan)
    usable = [i for i, (y, m) in enumerate(zip(labels, masks)) if y == 0 or m.any()]
    if not any(labels[i] == 0 for i in usable) or all(labels[i] == 0 for i in usable):
        log.warning("category %s: AUPIMO needs normal and anomalous test images with masks; skipped", category)
        return None
    found = aupimo([maps[i] for i in usable], [masks[i] for i in usable], bounds)
    values[usable] = found.values
    out.aupimo = {**aupimo_stats(values), "lowest_fpr": found.lowest_fpr}
    out.metrics["aupimo"] = out.aupimo["mean"]
    if not found.resolves_lower_bound:
        log.warning("category %s: the lowest shared FPR a threshold reaches is %.2g, above the AUPIMO lower bound "
                    "%.2g (too few normal pixels, or ties at their top score)", category, found.lowest_fpr,
                    found.fpr_bounds[0])
    return values


@functools.lru_cache(maxsize=4)
def _type_map_for(prompts: str | None) -> tuple[TypeMap, dict[str, tuple[str, ...]]]:
    from zsad.metrics.type_map import load_type_map
    from zsad.prompts import load_prompt_bank

    vocabulary = dict(load_prompt_bank(prompts).defects)
    return load_type_map(vocabulary=vocabulary), vocabulary


def _type_map(config: EvaluateConfig) -> tuple[TypeMap, dict[str, tuple[str, ...]]]:
    """The defect-type map and the vocabulary the method names types from (the bundled one or ``--prompts``')."""
    prompts = config.method_options.get("prompts")
    return _type_map_for(str(prompts) if prompts else None)


def _type_naming(samples: Sequence[Sample], outcomes: Sequence[Outcome], type_map: TypeMap,
                 vocabulary: dict[str, tuple[str, ...]], out: _Found) -> None:
    """The CSV's ``top_defect_type``/``mapped_defect_type`` columns and, when the method names types and some
    dataset type maps, accuracy and macro-F1 of the named type over the anomalous images with a mapped type."""
    from zsad.metrics import type_naming

    mapping: dict[str, str | None] = {}
    out.top_types, out.mapped_types = [], []
    for sample, outcome in zip(samples, outcomes):
        probs = outcome.result.defect_probs if outcome.result is not None else {}
        top = max(probs, key=probs.get) if probs else ""
        mapped = ""
        if sample.label == 1 and not type_map.is_unnamed(sample.defect_type):
            if sample.defect_type not in mapping:
                mapping[sample.defect_type] = type_map.resolve(sample.defect_type, vocabulary)
            mapped = mapping[sample.defect_type] or ""
            if mapped and top:
                out.type_pairs.append([mapped, top])
        out.top_types.append(top)
        out.mapped_types.append(mapped)
    if not mapping or not any(out.top_types):
        return  # the dataset names no type, or the method names none
    unmapped = sorted(name for name, kind in mapping.items() if kind is None)
    scores: dict[str, Any] = {"accuracy": None, "macro_f1": None, "n_images": 0, "types": []}
    if out.type_pairs:
        scores = type_naming([t for t, _ in out.type_pairs], [p for _, p in out.type_pairs])
    out.type_naming = {**scores, "mapping": {k: v for k, v in sorted(mapping.items()) if v}, "unmapped": unmapped}


# --------------------------------------------------------------------------- summary


def _mean(results: Sequence[CategoryResult]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in METRIC_KEYS:
        values = [r.metrics.get(key) for r in results]
        present = [v for v in values if v is not None and not math.isnan(v)]
        out[key] = float(np.mean(present)) if present else None
    return out


def _extra_summary(results: Sequence[CategoryResult], bounds: Sequence[float]) -> dict[str, Any]:
    """The ``aupimo``, ``defect_types`` and ``defect_type_naming`` keys of ``metrics.json``; the overall figures
    pool every image of every category (not a mean of category means)."""
    from zsad.metrics import aupimo_stats, type_naming

    pooled = [v for r in results for v in r.aupimo_values]
    pairs = [p for r in results for p in r.type_pairs]
    naming = {r.category: r.type_naming for r in results if r.type_naming}
    overall_naming: dict[str, Any] = {}
    if pairs:
        overall_naming = type_naming([t for t, _ in pairs], [p for _, p in pairs])
        overall_naming["unmapped"] = sorted({u for r in naming.values() for u in r.get("unmapped", [])})
    return {
        "aupimo": {"fpr_bounds": [float(b) for b in bounds],
                   "categories": {r.category: r.aupimo for r in results if r.aupimo},
                   "overall": aupimo_stats(pooled) if any(r.aupimo for r in results) else {}},
        "defect_types": {r.category: r.defect_types for r in results if r.defect_types},
        "defect_type_naming": {"categories": naming, "overall": overall_naming},
    }


def _cell(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _aupimo_markdown(summary: dict[str, Any]) -> list[str]:
    found = summary.get("aupimo") or {}
    if not found.get("categories"):
        return []
    lo, hi = found["fpr_bounds"]
    keys = ("mean", "q1", "median", "q3", "n_images", "n_undefined")
    lines = ["", f"AUPIMO per image (shared FPR over the normal images in [{lo:g}, {hi:g}], log scale; normal images "
                 f"have none and count as undefined):", "",
             "| category | mean | q1 | median | q3 | images | undefined |", "|---|---|---|---|---|---|---|"]
    rows = [*found["categories"].items(), ("**all images**", found.get("overall") or {})]
    lines += ["| " + " | ".join([name, *(_cell(stats.get(k)) for k in keys)]) + " |" for name, stats in rows]
    coarse = [name for name, stats in found["categories"].items() if (stats.get("lowest_fpr") or 0.0) > lo]
    if coarse:
        lines += ["", f"No threshold reaches a shared FPR as low as {lo:g} in: {', '.join(coarse)} (too few normal "
                      f"pixels, or ties at their top score); the curve's first step spans the gap (see the README)."]
    return lines


def _breakdown_markdown(summary: dict[str, Any]) -> list[str]:
    per_type = summary.get("defect_types") or {}
    lines: list[str] = []
    if per_type:
        keys = ("n_images", "image_auroc", "pixel_auroc", "aupro", "aupimo")
        lines += ["", f"Per defect type (each type against the category's normal images; aupro "
                      f"{summary['aupro_variant']}):", "",
                  "| category | type | images | image_auroc | pixel_auroc | aupro | aupimo |",
                  "|---|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join([cat, kind, *(_cell(row.get(k)) for k in keys)]) + " |"
                  for cat, kinds in per_type.items() for kind, row in kinds.items()]
    naming = summary.get("defect_type_naming") or {}
    if naming.get("categories"):
        lines += ["", "Defect-type naming (zsad's most likely type vs the dataset's type, mapped by "
                      "`prompts/defect_type_map.yaml`; unmapped types are left out):", "",
                  "| category | images | accuracy | macro-F1 | unmapped types |", "|---|---|---|---|---|"]
        rows = [*naming["categories"].items(), ("**all images**", naming.get("overall") or {})]
        lines += [f"| {name} | {_cell(r.get('n_images'))} | {_cell(r.get('accuracy'))} | {_cell(r.get('macro_f1'))} "
                  f"| {', '.join(r.get('unmapped') or []) or '-'} |" for name, r in rows]
    return lines


def metrics_markdown(summary: dict[str, Any]) -> str:
    """The Markdown tables of a ``metrics.json`` summary: one row per category, then the mean row; then the F1
    thresholds, AUPIMO's statistics, the per-defect-type breakdown and the type-naming scores where present."""
    headers = [f"aupro ({summary['aupro_variant']})" if k == "aupro" else k for k in METRIC_KEYS]

    def row(name: str, metrics: dict[str, float | None]) -> str:
        cells = ["-" if metrics.get(k) is None else f"{metrics[k]:.3f}" for k in METRIC_KEYS]
        return "| " + " | ".join([name, *cells]) + " |"

    lines = [
        f"Method `{summary['method']}`, backbone `{summary['backbone']}`"
        + (f" (activation `{summary['activation']}`)" if summary.get("activation") else "")
        + f", AUPRO variant `{summary['aupro_variant']}` (values in [0, 1]).",
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
    lines += _aupimo_markdown(summary)
    lines += _breakdown_markdown(summary)
    if any("anomalib_image_auroc" in m for m in summary["categories"].values()):
        from zsad.metrics.anomalib_backend import markdown

        lines += markdown(summary)
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
    if config.reference_shots is not None and config.reference_shots < 1:
        raise UsageError(f"--reference-shots must be at least 1, got {config.reference_shots}")
    if config.metrics_backend not in ("zsad", "anomalib"):
        raise UsageError(f"unknown metrics backend {config.metrics_backend!r}; choose zsad or anomalib")
    if config.metrics_backend == "anomalib":
        from zsad.metrics.anomalib_backend import check_available

        check_available()
    if config.resume and config.overwrite:
        raise UsageError("--resume and --overwrite exclude each other: resume keeps finished categories, overwrite "
                         "starts afresh")
    from zsad.metrics.aupimo import check_fpr_bounds

    check_fpr_bounds(config.aupimo_fpr_bounds)


def evaluate(config: EvaluateConfig, dist: Dist | None = None) -> dict[str, Any]:
    """Evaluate ``config.method`` on every chosen category of ``config.data``; returns the ``metrics.json`` dict.

    The detector is built only if some category still needs scoring (a fully resumed run loads no model). With
    several ranks (``dist``) the categories to score are spread over them, whole, largest first to the least loaded
    (:func:`~zsad.distributed.assign_groups`); each rank writes its categories' files, and the summary is made
    from the category files once all are written (rank 0 writes ``metrics.json``).
    """
    import zsad
    from zsad.data.datasets import open_dataset

    dist = dist or Dist()
    _check_config(config)
    dataset: Dataset = open_dataset(config.data, format=config.format, categories=config.categories)
    out = Path(config.out)
    signature = run_signature(config, dataset)  # once: it hashes the adapter's weights
    if config.overwrite and dist.is_main:
        for folder in ("categories", "per_image"):
            shutil.rmtree(out / folder, ignore_errors=True)
    dist.barrier("preparing the output folder")
    detector: Detector | None = None
    finished: dict[str, CategoryResult] = {}
    todo: list[tuple[str, list[Sample]]] = []
    for category in dataset.categories:
        marker = out / "categories" / f"{category}.json"
        done = _load_done(marker, signature) if config.resume else None
        if done is not None:
            log.info("category %s already evaluated; reusing %s", category, marker)
            finished[category] = done
            continue
        samples = dataset.samples(category, "test")
        if not samples:
            raise DatasetError(f"category '{category}' has no test images in {dataset.root}")
        todo.append((category, samples))
    owners = assign_groups([len(samples) for _, samples in todo], dist.world_size)
    mine = [(c, samples) for (c, samples), owner in zip(todo, owners) if owner == dist.rank]
    with _bar(len(mine), "categories", config.progress and dist.is_main, unit="cat", leave=True) as bar:
        for category, samples in mine:
            marker = out / "categories" / f"{category}.json"
            references = None
            if config.reference_shots:
                from zsad.methods.reference import draw_references

                references = draw_references(dataset, category, config.reference_shots, config.reference_seed,
                                             config.reference_draw)
                if detector is not None:
                    detector.method.set_references(references)
            if detector is None:
                detector = zsad.create(config.method, backbone=config.backbone, image_size=config.image_size,
                                       device=config.device, precision=config.precision,
                                       batch_size=config.batch_size, warn_random=False, references=references,
                                       activation=signature["activation"], **_method_options(config))
            detector.setup(category.replace("_", " ") if config.class_name_from_category else None)
            detector.method.dataset_defaults(dataset.format, category)  # e.g. AnomalyDINO's per-category masking
            started = time.perf_counter()
            outcomes = _score_category(detector, category, samples, config.progress and dist.is_main)
            seconds = time.perf_counter() - started
            failed = [o for o in outcomes if o.error is not None]
            for outcome in failed:
                log.warning("category %s: %s: %s", category, outcome.source.label, outcome.error)
            atomic_write_text(out / "per_image" / f"{category}.csv", _per_image_csv(samples, outcomes))
            found = _category_metrics(category, samples, outcomes, config)
            atomic_write_text(out / "per_image" / f"{category}.csv", _per_image_csv(samples, outcomes, found))
            result = CategoryResult(category, seconds=seconds, n_images=len(samples), n_failed=len(failed),
                                    **found.fields())
            atomic_write_text(marker, json.dumps(result.to_dict(signature), indent=2) + "\n")
            finished[category] = result
            bar.set_postfix(last=category)
            bar.update(1)
    if dist.active:
        dist.barrier("waiting for every rank's categories")
        for category, _ in todo:
            if category not in finished:
                finished[category] = _load_done(out / "categories" / f"{category}.json", signature)
    finished = [finished[c] for c in dataset.categories]
    summary = {
        "method": config.method,
        "backbone": config.backbone,
        "activation": signature["activation"],
        "aupro_variant": config.aupro_variant,
        "categories": {r.category: r.metrics for r in finished},
        "mean": _mean(finished),
        "f1_thresholds": {r.category: r.f1_thresholds for r in finished},
        "n_failed": {r.category: r.n_failed for r in finished},
        **({"references": {"shots": config.reference_shots, "seed": config.reference_seed,
                           "draw": config.reference_draw}}
           if config.reference_shots else {}),
        **_extra_summary(finished, config.aupimo_fpr_bounds),
    }
    if dist.is_main:
        atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
        atomic_write_text(out / "metrics.md", metrics_markdown(summary))
    dist.barrier("writing metrics.json")
    return summary
