"""Places a question can ask about, as sets of 3x3 grid cells, and how they are named in questions.

A region is *in* a place when the grid cell of its centroid is one of the place's cells (the same rule that
names a region's position everywhere else). "top" / "bottom" / "left" / "right" are the whole row or column,
"center" the middle cell, "edge" the eight outer cells, "corner" the four corners. The words "left", "right",
"top" and "bottom" name a place only where they can ("on the left", "the top left", "left side"), so "is it all
right?" and "is anything left?" ask about no place; nor does a place word after "which" / "what" ("in which
corner?" asks where).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zsad.dialogue.understand.tokens import find_all
from zsad.types import GRID_CELLS


@dataclass(frozen=True)
class Area:
    """A named set of grid cells; ``label`` names it ("the top left", "the edges"), ``where`` says where
    ("at the top left", "on the left side", "near the edges")."""

    name: str
    cells: frozenset[str]
    label: str
    where: str


def _area(name: str, cells: Sequence[str], label: str | None = None, preposition: str = "at") -> Area:
    label = label or f"the {name}"
    return Area(name, frozenset(cells), label, f"{preposition} {label}")


#: The places of the question bank's ``region`` field and of answers, by name.
AREAS: dict[str, Area] = {
    **{cell: _area(cell, [cell]) for cell in ("top left", "top right", "bottom left", "bottom right", "center")},
    "top": _area("top", ["top left", "top", "top right"]),
    "bottom": _area("bottom", ["bottom left", "bottom", "bottom right"]),
    "left": _area("left", ["top left", "left", "bottom left"], "the left side", "on"),
    "right": _area("right", ["top right", "right", "bottom right"], "the right side", "on"),
    "edge": _area("edge", [c for c in GRID_CELLS if c != "center"], "the edges", "near"),
    "corner": _area("corner", ["top left", "top right", "bottom left", "bottom right"], "the corners", "in"),
}

#: (words, area name), longest first; a match claims its words.
PLACE_PHRASES: tuple[tuple[str, str], ...] = tuple(sorted((
    *((f"{v} {h}", f"{v} {h}") for v in ("top", "bottom") for h in ("left", "right")),
    *((f"upper {h}", f"top {h}") for h in ("left", "right")), *((f"lower {h}", f"bottom {h}") for h in ("left", "right")),
    *((f"{h} top", f"top {h}") for h in ("left", "right")), *((f"{h} bottom", f"bottom {h}") for h in ("left", "right")),
    ("top", "top"), ("upper", "top"), ("bottom", "bottom"), ("lower", "bottom"), ("left", "left"), ("right", "right"),
    ("center", "center"), ("centre", "center"), ("middle", "center"), ("central", "center"),
    ("edge", "edge"), ("edges", "edge"), ("border", "edge"), ("borders", "edge"), ("rim", "edge"),
    ("perimeter", "edge"), ("periphery", "edge"), ("margin", "edge"), ("margins", "edge"), ("outer", "edge"),
    ("corner", "corner"), ("corners", "corner"),
), key=lambda p: -len(p[0].split())))
#: Words a place phrase may carry after it ("top left corner", "left side", "bottom edge").
PLACE_SUFFIXES = frozenset({"corner", "corners", "side", "sides", "half", "halves", "part", "parts", "edge", "edges",
                            "area", "region", "section", "portion", "row", "column", "of"})
#: Single words that are a place only after one of ``PLACE_CONTEXT`` or before a suffix.
NEEDS_CONTEXT = frozenset({"top", "upper", "bottom", "lower", "left", "right"})
PLACE_CONTEXT = frozenset({"the", "on", "at", "in", "to", "near", "toward", "towards", "from", "far", "along",
                           "top", "bottom", "upper", "lower"})
NOT_ASKED_AFTER = frozenset({"which", "what"})


def table_words() -> set[str]:
    return {w for phrase, _ in PLACE_PHRASES for w in phrase.split()} | PLACE_SUFFIXES


def find_places(tokens: Sequence[str], taken: set[int]) -> list[tuple[int, int, Area]]:
    """The places asked about, as ``(start, end, area)``; their words (and suffixes) are added to ``taken``."""
    found = []
    for phrase, name in PLACE_PHRASES:
        words = phrase.split()
        for start in find_all(words, tokens):
            end = start + len(words)
            if taken.intersection(range(start, end)):
                continue
            before = tokens[start - 1] if start else ""
            after = tokens[end] if end < len(tokens) else ""
            if len(words) == 1 and words[0] in NEEDS_CONTEXT and before not in PLACE_CONTEXT \
                    and after not in PLACE_SUFFIXES:
                continue
            while end < len(tokens) and tokens[end] in PLACE_SUFFIXES - {"of"}:
                end += 1
            taken.update(range(start, end))
            if before not in NOT_ASKED_AFTER:
                found.append((start, end, AREAS[name]))
    return sorted(found, key=lambda f: f[0])


def cell_area(cell: str) -> Area:
    """The place of one grid cell (a region talked about before)."""
    return AREAS.get(cell) or _area(cell, [cell])


def cell_box(cell: str, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of a grid cell in an image of ``(width, height)``."""
    width, height = image_size
    row, col = divmod(GRID_CELLS.index(cell), 3)
    return col * width / 3, row * height / 3, (col + 1) * width / 3, (row + 1) * height / 3


def reaches(bbox: tuple[int, int, int, int], area: Area, image_size: tuple[int, int] | None,
            min_fraction: float = 0.05) -> bool:
    """Whether a box covers at least ``min_fraction`` of one of the area's cells (it spills into the place)."""
    if image_size is None:
        return False
    x0, y0, x1, y1 = bbox
    for cell in area.cells:
        cx0, cy0, cx1, cy1 = cell_box(cell, image_size)
        overlap = max(0.0, min(x1, cx1) - max(x0, cx0)) * max(0.0, min(y1, cy1) - max(y0, cy0))
        if overlap >= min_fraction * (cx1 - cx0) * (cy1 - cy0):
            return True
    return False
