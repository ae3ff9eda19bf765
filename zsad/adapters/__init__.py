"""Learned adapters: folders of ``adapter.json`` + ``weights.safetensors`` (see :mod:`zsad.adapters.folder`)."""

from zsad.adapters.folder import AdapterFolder, load_adapter, read_adapter_config, save_adapter

__all__ = ["AdapterFolder", "load_adapter", "read_adapter_config", "save_adapter"]
