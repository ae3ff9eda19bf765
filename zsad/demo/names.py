"""File names from visitors, made safe before they touch the disk or the table."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                               *(f"LPT{i}" for i in range(1, 10))})


def safe_name(name: str, fallback: str = "image", max_chars: int = 80) -> str:
    """A name safe to write in any folder: the last component of ``name`` (either slash), ASCII letters, digits,
    ``._-`` only, no leading dot or dash (no hidden files, no ``..``, no CSV formulas), bounded length."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    base = _UNSAFE_CHARS.sub("_", base).lstrip("._-").rstrip(". ")
    if not base:
        return fallback
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    if stem.upper() in _WINDOWS_RESERVED:
        stem = "_" + stem
    if len(stem) + len(ext) + 1 > max_chars:
        ext = ext[:10]
        stem = stem[: max(1, max_chars - len(ext) - 1)]
    return f"{stem}.{ext}" if ext else stem


def unique_names(names: Sequence[str]) -> list[str]:
    """Safe names, made distinct with ``-2``, ``-3`` ... before the extension (case-insensitively)."""
    seen: set[str] = set()
    out = []
    for raw in names:
        name = safe_name(raw)
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        candidate, n = name, 1
        while candidate.lower() in seen:
            n += 1
            candidate = f"{stem}-{n}.{ext}" if ext else f"{stem}-{n}"
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def png_name(name: str) -> str:
    """``name`` with ``.png`` appended unless it already ends so (the overlays are PNG)."""
    return name if name.lower().endswith(".png") else f"{name}.png"
