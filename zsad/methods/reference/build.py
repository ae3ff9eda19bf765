"""Building a reference-guided detector, and drawing few-shot references from a dataset's train split."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zsad.errors import DatasetError, UsageError
from zsad.methods.musc import MuscMethod
from zsad.methods.reference.method import ReferenceConfig, ReferenceMethod

#: method options that mean nothing for reference-guided scoring (they tune text prompts or learned adapters)
_TEXT_OPTIONS = frozenset({"prompts", "adapter", "musc_weight"})


def reference_config(method_options: dict[str, Any], batch_size: int) -> ReferenceConfig:
    """The :class:`ReferenceConfig` of ``zsad.create(..., references=...)`` keywords; options that tune text
    prompts or adapters, or that reference scoring does not have, are refused by name."""
    dropped = sorted(set(method_options) & _TEXT_OPTIONS)
    if dropped:
        raise UsageError(f"options {dropped} do not apply to scoring against references (patch features only)")
    known = {f.name for f in dataclasses.fields(ReferenceConfig)}
    unknown = sorted(set(method_options) - known)
    if unknown:
        raise UsageError(f"scoring against references has no option(s) {unknown}; options: {sorted(known)}")
    return ReferenceConfig(**{"batch_size": batch_size, **method_options})


def reference_activation(activation: str, backbone: str, image_size: int, *, cache_dir: str | None = None) -> str:
    """The MLP activation reference scoring runs: MuSc's, whatever ``method`` is, because the features are MuSc's
    (``auto``: what its published code ran); a musc export (ONNX runtime) holds the same, so both runtimes agree."""
    return MuscMethod.activation_for(activation, backbone, image_size, cache_dir=cache_dir)


def reference_scorer(backbone, method: str, *, dtype, config: ReferenceConfig) -> ReferenceMethod:
    """A :class:`ReferenceMethod` on a loaded backbone (PyTorch or ONNX), before its references are set;
    ``method`` says whether batches are joint."""
    from zsad.methods import method_class

    return ReferenceMethod(backbone, dtype=dtype, config=config, base=method,
                           transductive=method_class(method).transductive)


def reference_method(method: str, references: Sequence[Any], *, backbone: str, device: str, precision: str,
                     image_size: int, batch_size: int, cache_dir: str | None, warn_random: bool,
                     activation: str = "auto", **method_options) -> ReferenceMethod:
    """The method of ``zsad.create(method, references=...)``: a :class:`ReferenceMethod` on ``backbone`` (any,
    CLIP or timm), its memory bank built from ``references``; ``method`` says whether batches are joint."""
    from zsad.backbones import load_backbone
    from zsad.methods import method_class
    from zsad.runtime import resolve_device, resolve_precision

    method_class(method)  # an unknown method is refused by name
    if not isinstance(backbone, str):
        raise UsageError("references need a backbone name (a shared, already loaded backbone is not supported)")
    config = reference_config(method_options, batch_size)
    torch_device = resolve_device(device)
    dtype = resolve_precision(precision, torch_device)
    act = reference_activation(activation, backbone, image_size, cache_dir=cache_dir)
    bb = load_backbone(backbone, image_size=image_size, device=torch_device, cache_dir=cache_dir,
                       pos_interpolation=MuscMethod.pos_interpolation, warn_random=warn_random, activation=act)
    scorer = reference_scorer(bb, method, dtype=dtype, config=config)
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
