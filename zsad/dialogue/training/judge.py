"""Reading answers back into facts, and the dialogue metrics (lvlm.md §4.6).

An answer's yes or no is read by :mod:`zsad.dialogue.answer.replies` (serving checks an LVLM's answer with it
too); this module reads cells, types and counts and scores them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from zsad.types import GRID_CELLS

#: Phrases naming a cell, longest first so "top left" wins over "top" and "left".
_CELL_PHRASES: tuple[tuple[str, str], ...] = (
    ("upper left", "top left"), ("upper right", "top right"), ("lower left", "bottom left"),
    ("lower right", "bottom right"), ("top left", "top left"), ("top right", "top right"),
    ("bottom left", "bottom left"), ("bottom right", "bottom right"), ("top-left", "top left"),
    ("top-right", "top right"), ("bottom-left", "bottom left"), ("bottom-right", "bottom right"),
    ("upper", "top"), ("lower", "bottom"), ("top", "top"), ("bottom", "bottom"), ("left", "left"),
    ("right", "right"), ("centre", "center"), ("center", "center"), ("middle", "center"),
)


def parse_cells(text: str) -> set[str]:
    """The grid cells an answer names ("at the top left and the center" -> {"top left", "center"})."""
    rest = " " + re.sub(r"[^a-z\- ]+", " ", text.lower()) + " "
    found: set[str] = set()
    for phrase, cell in _CELL_PHRASES:
        pattern = re.compile(rf"(?<![a-z-]){re.escape(phrase)}(?![a-z-])")
        if pattern.search(rest):
            found.add(cell)
            rest = pattern.sub(" ", rest)
    return found


def parse_type(text: str, vocab: dict[str, Sequence[str]]) -> str | None:
    """The first canonical defect type an answer names, by canonical name or synonym (earliest mention wins)."""
    lower = text.lower()
    best: tuple[int, str] | None = None
    for canonical, synonyms in vocab.items():
        for phrase in (canonical, *synonyms):
            m = re.search(rf"\b{re.escape(phrase.lower())}", lower)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), canonical)
    return None if best is None else best[1]


def parse_count(text: str) -> int | None:
    """A number of defects stated in words or digits ("There are two defects." -> 2; "no defects" -> 0)."""
    words = {"no": 0, "zero": 0, "none": 0, "one": 1, "a": 1, "an": 1, "single": 1, "two": 2, "three": 3,
             "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
    for token in re.findall(r"[a-z]+|\d+", text.lower()):
        if token.isdigit():
            return int(token)
        if token in words and token not in ("a", "an"):
            return words[token]
    return None


def _neighbours(cell: str) -> set[str]:
    i = GRID_CELLS.index(cell)
    r, c = divmod(i, 3)
    return {GRID_CELLS[rr * 3 + cc] for rr in range(max(0, r - 1), min(3, r + 2))
            for cc in range(max(0, c - 1), min(3, c + 2))}


def location_scores(predicted: set[str], truth: set[str]) -> dict[str, float]:
    """Exact match, Jaccard, and a hit that accepts a neighbouring cell (every true cell within one of a
    predicted one)."""
    exact = float(predicted == truth)
    union = predicted | truth
    jaccard = 1.0 if not union else len(predicted & truth) / len(union)
    near = {n for p in predicted for n in _neighbours(p)}
    hit = float(bool(truth) and bool(predicted) and truth <= near) if truth else float(not predicted)
    return {"exact": exact, "jaccard": jaccard, "hit_neighbour": hit}


def binary_metrics(predicted: Iterable[bool | None], truth: Iterable[bool]) -> dict[str, float]:
    """Accuracy, balanced accuracy, F1 (scikit-learn; an unparsed answer counts as the wrong one) and the share
    of unparsed answers."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    pairs = list(zip(predicted, truth, strict=True))
    if not pairs:
        return {"n": 0, "accuracy": float("nan"), "balanced_accuracy": float("nan"), "f1": float("nan"),
                "unparsed": float("nan")}
    y_true = [bool(t) for _, t in pairs]
    y_pred = [(not t) if p is None else bool(p) for p, t in pairs]
    balanced = (balanced_accuracy_score(y_true, y_pred) if len(set(y_true)) == 2
                else accuracy_score(y_true, y_pred))  # one class only: its recall
    return {"n": len(pairs), "accuracy": float(accuracy_score(y_true, y_pred)), "balanced_accuracy": float(balanced),
            "f1": float(f1_score(y_true, y_pred, zero_division=0.0)),
            "unparsed": sum(1 for p, _ in pairs if p is None) / len(pairs)}


def macro_f1(predicted: Sequence[str | None], truth: Sequence[str]) -> float:
    """Macro-F1 over the true classes (scikit-learn; a None prediction is wrong for every class)."""
    from sklearn.metrics import f1_score

    classes = sorted(set(truth))
    if not classes:
        return float("nan")
    labels = ["" if p is None else p for p in predicted]
    return float(f1_score(list(truth), labels, labels=classes, average="macro", zero_division=0.0))


def covered_cells(mask: np.ndarray, min_fraction: float = 0.05) -> set[str]:
    """The 3x3 grid cells at least ``min_fraction`` covered by the mask: the true location set (lvlm.md §4.6)."""
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    rows = np.linspace(0, height, 4).round().astype(int)
    cols = np.linspace(0, width, 4).round().astype(int)
    cells = set()
    for r in range(3):
        for c in range(3):
            part = mask[rows[r]:rows[r + 1], cols[c]:cols[c + 1]]
            if part.size and part.mean() >= min_fraction:
                cells.add(GRID_CELLS[r * 3 + c])
    return cells
