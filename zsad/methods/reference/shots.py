"""Few-shot references drawn from a dataset's train split (``zsad evaluate --reference-shots``)."""

from __future__ import annotations

import random
from pathlib import Path

from zsad.errors import DatasetError, UsageError


def draw_references(dataset, category: str, shots: int, seed: int) -> list[Path]:
    """``shots`` normal images of ``category``'s train split, drawn with ``seed`` (the same draw for the same
    dataset, category, shots and seed), in file order: WinCLIP's / AnomalyDINO's few-shot protocol."""
    if shots < 1:
        raise UsageError(f"--reference-shots must be at least 1, got {shots}")
    normal = [s.image_path for s in dataset.samples(category, "train") if s.label == 0]
    if len(normal) < shots:
        raise DatasetError(f"category '{category}': {shots} reference shots asked, its train split has "
                           f"{len(normal)} normal images")
    chosen = random.Random(f"{seed}/{category}").sample(range(len(normal)), shots)
    return [normal[i] for i in sorted(chosen)]
