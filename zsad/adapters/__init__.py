"""Learned adapters: folders of ``adapter.json`` + ``weights.safetensors`` (see :mod:`zsad.adapters.folder`).

:func:`load` is the checked entry point: besides the folder's own problems (missing files, wrong kind,
unsupported version) it refuses an adapter made for another backbone, and runs the caller's validator (tensor
shapes of the kind). This package is the file-format layer only: it imports no method (``zsad.methods.anomalyclip``,
``zsad.dialogue``); the method that owns a kind passes its own validator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from zsad.adapters.folder import AdapterFolder, load_adapter, read_adapter_config, save_adapter
from zsad.errors import AdapterError

if TYPE_CHECKING:
    from zsad.backbones.base import Backbone

log = logging.getLogger(__name__)

#: ``validator(folder, backbone_or_None)``: checks a kind's fields and tensors, raising :class:`AdapterError`;
#: it gets the loaded backbone, or ``None`` when the backbone was given by name (or not at all).
Validator = Callable[[AdapterFolder, Optional["Backbone"]], None]


def backbone_name(backbone: Backbone | str) -> str:
    return backbone if isinstance(backbone, str) else backbone.spec.name


def check_backbone(folder: AdapterFolder, backbone: Backbone | str) -> None:
    """The adapter's recorded backbone must be the one given. The same architecture with weights from a local
    file is accepted with a warning (a file path cannot be compared with a pretrained tag)."""
    from zsad.backbones.names import parse_backbone_name

    where = folder.path or "adapter"
    recorded = folder.config.get("backbone")
    if not recorded:
        raise AdapterError(f"{where}: adapter.json does not name the backbone it was made for")
    name = backbone_name(backbone)
    if recorded == name:
        return
    ours, theirs = parse_backbone_name(name), parse_backbone_name(str(recorded))
    if ours.arch == theirs.arch and "file" in (ours.kind, theirs.kind):
        log.warning("adapter %s was made for backbone '%s' and is used with '%s': same architecture; make sure the "
                    "weights are the same", where, recorded, name)
        return
    raise AdapterError(f"{where}: adapter was made for backbone '{recorded}' but the backbone is '{name}'; "
                       f"use --backbone {recorded} or an adapter trained for {name}")


def load(path: str | Path, backbone: Backbone | str | None = None, *, kind: str | None = None,
         validator: Validator | None = None) -> AdapterFolder:
    """Read an adapter folder and check it: kind (when given), backbone (when given: a loaded backbone or its
    name) and, with ``validator`` (the kind's own check, e.g. ``zsad.methods.anomalyclip.adapter.check_folder``), its
    fields and tensor shapes. Every problem is an :class:`AdapterError` saying what is wrong with which file."""
    folder = load_adapter(path, kind)
    if backbone is not None:
        check_backbone(folder, backbone)
    if validator is not None:
        validator(folder, None if isinstance(backbone, str) else backbone)
    return folder


__all__ = ["AdapterFolder", "Validator", "check_backbone", "load", "load_adapter", "read_adapter_config",
           "save_adapter"]
