"""The read-only method registry: stable names -> classes, imported lazily so ``import zsad`` stays fast.

What a method can do is said by its class (:class:`~zsad.methods.base.Method`: ``needs_text``, ``min_batch``,
``joint_from``, ``exportable``, ``adapter_kind``, ``summary``); every list a front end shows is read from there
(:func:`list_methods` with filters), never kept beside it.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import Any

from zsad.errors import UsageError

#: name -> (module, class)
METHODS = MappingProxyType({
    "auto": ("zsad.methods.auto", "AutoMethod"),
    "anomalyclip": ("zsad.methods.anomalyclip.method", "AnomalyClipMethod"),
    "anomalydino": ("zsad.methods.anomalydino.method", "AnomalyDinoMethod"),
    "clip": ("zsad.methods.clip", "ClipMethod"),
    "musc": ("zsad.methods.musc.method", "MuscMethod"),
    "vfm": ("zsad.methods.vfm.method", "VfmMethod"),
})
#: what ``zsad.create()`` and every command build when no method is named: MuSc fused with clip, which degrades to
#: clip alone below MuSc's batch size, so it serves one image and a whole folder alike
DEFAULT_METHOD = "auto"


def method_class(name: str):
    """The class registered under ``name``; an unknown name is a usage error listing the known ones."""
    if name not in METHODS:
        raise UsageError(f"unknown method '{name}' (known: {', '.join(METHODS)})")
    module, cls = METHODS[name]
    return getattr(importlib.import_module(module), cls)


def list_methods(**capabilities: Any) -> list[str]:
    """Registered method names, optionally only those whose class attributes equal ``capabilities`` (e.g.
    ``list_methods(exportable=True)``, ``list_methods(min_batch=1)`` for methods that score a single image)."""
    names = list(METHODS)
    if not capabilities:
        return names
    return [n for n in names if all(getattr(method_class(n), k) == v for k, v in capabilities.items())]
