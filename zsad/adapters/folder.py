"""The adapter folder format shared by every learned artefact (prompt learners, LoRA dialogue heads).

A folder holds ``adapter.json`` (``kind``, ``format_version`` and the kind's own fields) and
``weights.safetensors`` (tensors only: safetensors cannot carry code, so loading never runs anything).
A save writes the whole folder beside the old one and swaps it in with one rename (:func:`zsad.fileio.atomic_dir`):
a crash leaves the old adapter or the new one whole, never a config from one and weights from the other.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zsad.errors import AdapterError
from zsad.fileio import atomic_dir, read_json, settle_dir

CONFIG_NAME = "adapter.json"
WEIGHTS_NAME = "weights.safetensors"
FORMAT_VERSION = 1


@dataclass
class AdapterFolder:
    """What one adapter folder holds: its kind, its JSON fields and its tensors (on CPU)."""

    kind: str
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None


def write_adapter_files(folder: str | Path, kind: str, config: dict[str, Any],
                        tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``weights.safetensors`` and ``adapter.json`` into ``folder`` as plain files. Atomic only inside
    :func:`zsad.fileio.atomic_dir` (whose new folder appears whole); use :func:`save_adapter` otherwise."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    save_file(cpu, str(folder / WEIGHTS_NAME), metadata={"kind": kind, "format_version": str(FORMAT_VERSION)})
    record = {"kind": kind, "format_version": FORMAT_VERSION, **config}
    with open(folder / CONFIG_NAME, "w", encoding="utf-8", newline="") as handle:
        handle.write(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return folder


def save_adapter(folder: str | Path, kind: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``adapter.json`` and ``weights.safetensors`` as the folder ``folder`` (created if needed), replacing
    an existing one at once; other files in it (a training log, a README) are kept."""
    folder = Path(folder)
    with atomic_dir(folder) as new:
        write_adapter_files(new, kind, config, tensors)
    return folder


def read_adapter_config(folder: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The parsed ``adapter.json`` of ``folder``; checks the kind and format version when given."""
    folder = settle_dir(folder)  # a folder a crashed writer left aside mid-swap is put back
    if not folder.is_dir():
        raise AdapterError(f"adapter folder '{folder}' does not exist")
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise AdapterError(f"'{folder}' is not an adapter folder: {CONFIG_NAME} is missing")
    config = read_json(config_path, AdapterError, "the adapter's JSON")
    if not isinstance(config, dict) or "kind" not in config:
        raise AdapterError(f"{config_path}: no 'kind' field")
    if kind is not None and config["kind"] != kind:
        raise AdapterError(f"{folder}: adapter kind is '{config['kind']}', expected '{kind}'")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise AdapterError(f"{config_path}: format version {version!r} is not supported (this zsad reads {FORMAT_VERSION})")
    return config


def _identity(folder: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _read_adapter(folder: Path, kind: str | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_adapter_config(folder, kind)
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise AdapterError(f"{folder}: {WEIGHTS_NAME} is missing")
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    return config, tensors


def load_adapter(folder: str | Path, kind: str | None = None) -> AdapterFolder:
    """Read an adapter folder; every problem is an :class:`AdapterError` naming the file. The config and the
    weights come from one version of the folder: a folder replaced while being read is read again."""
    folder = Path(folder)
    for _ in range(3):
        where = settle_dir(folder)
        before = _identity(where)
        try:
            config, tensors = _read_adapter(where, kind)
        except AdapterError:
            if _identity(where) == before:
                raise
            continue
        if _identity(where) == before:
            break
    else:
        config, tensors = _read_adapter(settle_dir(folder), kind)
    fields = {k: v for k, v in config.items() if k not in ("kind", "format_version")}
    return AdapterFolder(kind=config["kind"], config=fields, tensors=tensors, path=folder)
