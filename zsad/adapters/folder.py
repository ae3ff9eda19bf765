"""The adapter folder format shared by every learned artefact (prompt learners, LoRA dialogue heads).

A folder holds ``adapter.json`` (``kind``, ``format_version`` and the kind's own fields) and
``weights.safetensors`` (tensors only: safetensors cannot carry code, so loading never runs anything).
Writes go through temporary files and ``os.replace``: a crash leaves the old adapter or the new one whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zsad.errors import AdapterError
from zsad.fileio import atomic_write_text, read_json

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


def save_adapter(folder: str | Path, kind: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``adapter.json`` and ``weights.safetensors`` into ``folder`` (created if needed)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    tmp = folder / f".{WEIGHTS_NAME}.{os.getpid()}.tmp"
    try:
        save_file(cpu, str(tmp), metadata={"kind": kind, "format_version": str(FORMAT_VERSION)})
        os.replace(tmp, folder / WEIGHTS_NAME)
    finally:
        if tmp.exists():
            tmp.unlink()
    record = {"kind": kind, "format_version": FORMAT_VERSION, **config}
    atomic_write_text(folder / CONFIG_NAME, json.dumps(record, indent=2, sort_keys=False) + "\n")
    return folder


def read_adapter_config(folder: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The parsed ``adapter.json`` of ``folder``; checks the kind and format version when given."""
    folder = Path(folder)
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


def load_adapter(folder: str | Path, kind: str | None = None) -> AdapterFolder:
    """Read an adapter folder; every problem is an :class:`AdapterError` naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_adapter_config(folder, kind)
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise AdapterError(f"{folder}: {WEIGHTS_NAME} is missing")
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    fields = {k: v for k, v in config.items() if k not in ("kind", "format_version")}
    return AdapterFolder(kind=config["kind"], config=fields, tensors=tensors, path=folder)
