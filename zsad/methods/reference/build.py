"""Building a reference-guided detector, and drawing few-shot references from a dataset's train split."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zsad.errors import DatasetError, UsageError
from zsad.methods.reference.method import ReferenceConfig, ReferenceMethod

#: method options that mean nothing for reference-guided scoring (they tune text prompts or learned adapters)
_TEXT_OPTIONS = frozenset({"prompts", "adapter", "musc_weight"})


def reference_method(method: str, references: Sequence[Any], *, backbone: str, device: str, precision: str,
                     image_size: int, batch_size: int, cache_dir: str | None, warn_random: bool,
                     activation: str = "auto", **method_options) -> ReferenceMethod:
    """The method of ``zsad.create(method, references=...)``: a :class:`ReferenceMethod` on ``backbone`` (any,
    CLIP or timm), its memory bank built from ``references``; ``method`` says whether batches are joint."""
    from zsad.backbones import load_backbone
    from zsad.methods import method_class
    from zsad.runtime import resolve_device, resolve_precision

    cls = method_class(method)
    if not isinstance(backbone, str):
        raise UsageError("references need a backbone name (a shared, already loaded backbone is not supported)")
    dropped = sorted(set(method_options) & _TEXT_OPTIONS)
    if dropped:
        raise UsageError(f"options {dropped} do not apply to scoring against references (patch features only)")
    known = {f.name for f in dataclasses.fields(ReferenceConfig)}
    unknown = sorted(set(method_options) - known)
    if unknown:
        raise UsageError(f"scoring against references has no option(s) {unknown}; options: {sorted(known)}")
    torch_device = resolve_device(device)
    dtype = resolve_precision(precision, torch_device)
    load_options = {}
    resolve = getattr(cls, "activation_for", None)  # CLIP's MLP activation, resolved per method (--activation)
    if resolve is not None:
        load_options["activation"] = resolve(activation, backbone, image_size, cache_dir=cache_dir)
    bb = load_backbone(backbone, image_size=image_size, device=torch_device, cache_dir=cache_dir,
                       pos_interpolation="bicubic", warn_random=warn_random, **load_options)
    config = ReferenceConfig(**{"batch_size": batch_size, **method_options})
    scorer = ReferenceMethod(bb, dtype=dtype, config=config, base=method, transductive=cls.transductive)
    scorer.set_references(list(references))
    return scorer


def draw_references(dataset, category: str, shots: int, seed: int) -> list[Path]:
    """``shots`` normal images of ``category``'s train split, drawn with ``seed`` (the same draw for the same
    dataset, category, shots and seed), in file order: WinCLIP's / AnomalyDINO's few-shot protocol."""
    if shots < 1:
        raise UsageError(f"--reference-shots must be at least 1, got {shots}")
    normal = [s.image_path for s in dataset.samples(category, "train") if s.label == 0]
    if len(normal) < shots:
        raise DatasetError(f"category '{category}': {shots} reference shots asked, its train split has "
                           f"{len(normal)} normal images")
    chosen = random.Random(f"{seed}/{category}").sample(range(len(normal)), shots)
    return [normal[i] for i in sorted(chosen)]
