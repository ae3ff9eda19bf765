"""Where the data folders that ship with zsad live: inside the installed wheel (``zsad/_data/<name>``) or, in an
editable install, the repository's top-level ``<name>/`` folder (``prompts``, ``demo``, ``adapters``)."""

from __future__ import annotations

from pathlib import Path


def data_dir(name: str, marker: str) -> Path:
    """The bundled folder ``name``; ``marker`` is a file it must contain (guards against a stray folder)."""
    here = Path(__file__).resolve().parent
    candidates = (here / "_data" / name, here.parent / name)
    for candidate in candidates:
        if (candidate / marker).is_file():
            return candidate
    raise FileNotFoundError(f"zsad's bundled '{name}' folder is missing (looked in {candidates[0]} and "
                            f"{candidates[1]}); reinstall zsad")
