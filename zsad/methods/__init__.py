"""The read-only method registry: stable names -> classes, imported lazily so ``import zsad`` stays fast."""

from __future__ import annotations

import importlib
from types import MappingProxyType

from zsad.errors import UsageError

#: name -> (module, class, one-line description)
METHODS = MappingProxyType({
    "clip": ("zsad.methods.clip", "ClipMethod", "training-free CLIP: prompt ensembles x value-value patch tokens"),
})


def list_methods() -> list[str]:
    return list(METHODS)


def method_class(name: str):
    """The class registered under ``name``; an unknown name is a usage error listing the known ones."""
    if name not in METHODS:
        raise UsageError(f"unknown method '{name}' (known: {', '.join(METHODS)})")
    module, cls, _ = METHODS[name]
    return getattr(importlib.import_module(module), cls)
