"""The read-only method registry: stable names -> classes, imported lazily so ``import zsad`` stays fast."""

from __future__ import annotations

import importlib
from types import MappingProxyType

from zsad.errors import UsageError

#: name -> (module, class, one-line description)
METHODS = MappingProxyType({
    "auto": ("zsad.methods.auto", "AutoMethod", "MuSc fused with clip for batches of >= 5 images, clip alone otherwise"),
    "anomalyclip": ("zsad.methods.anomalyclip.method", "AnomalyClipMethod", "AnomalyCLIP learned object-agnostic prompts (needs --adapter)"),
    "clip": ("zsad.methods.clip", "ClipMethod", "training-free CLIP: prompt ensembles x value-value patch tokens"),
    "musc": ("zsad.methods.musc.method", "MuscMethod", "mutual scoring: unlabeled images of a batch score each other (>= 5)"),
})


def list_methods() -> list[str]:
    return list(METHODS)


def method_class(name: str):
    """The class registered under ``name``; an unknown name is a usage error listing the known ones."""
    if name not in METHODS:
        raise UsageError(f"unknown method '{name}' (known: {', '.join(METHODS)})")
    module, cls, _ = METHODS[name]
    return getattr(importlib.import_module(module), cls)
