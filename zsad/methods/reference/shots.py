"""Few-shot references drawn from a dataset's train split (``zsad evaluate --reference-shots``).

Two draws:

- ``slice`` (default): AnomalyDINO's protocol (dammsi/AnomalyDINO ``src/detection.py``): the normal train images
  sorted by file name, images ``[seed * K, (seed + 1) * K)``, so seeds 0, 1, 2 take disjoint sets and the numbers
  line up with the paper's. A slice past the end is an error (the official code warns and uses fewer);
- ``random``: ``K`` images drawn with ``seed`` (WinCLIP-style repeated random draws; zsad's draw before the
  official protocol was adopted, kept so earlier runs can be repeated).
"""

from __future__ import annotations

import random
from pathlib import Path

from zsad.errors import DatasetError, UsageError

DRAWS = ("slice", "random")


def draw_references(dataset, category: str, shots: int, seed: int, draw: str = "slice") -> list[Path]:
    """``shots`` normal images of ``category``'s train split, chosen by ``draw`` with ``seed`` (see the module doc);
    the same dataset, category, shots, seed and draw always give the same images."""
    if shots < 1:
        raise UsageError(f"--reference-shots must be at least 1, got {shots}")
    if draw not in DRAWS:
        raise UsageError(f"unknown reference draw '{draw}' (use {' or '.join(DRAWS)})")
    if seed < 0:
        raise UsageError(f"--reference-seed must be at least 0, got {seed}")
    normal = [s.image_path for s in dataset.samples(category, "train") if s.label == 0]
    if len(normal) < shots:
        raise DatasetError(f"category '{category}': {shots} reference shots asked, its train split has "
                           f"{len(normal)} normal images")
    if draw == "slice":
        ordered = sorted(normal, key=lambda p: (Path(p).name, str(p)))
        start, stop = seed * shots, (seed + 1) * shots
        if stop > len(ordered):
            raise DatasetError(f"category '{category}': seed {seed} with {shots} shots takes images {start}-{stop - 1} "
                               f"of its {len(ordered)} sorted normal train images; use a smaller seed or "
                               f"--reference-draw random")
        return list(ordered[start:stop])
    chosen = random.Random(f"{seed}/{category}").sample(range(len(normal)), shots)
    return [normal[i] for i in sorted(chosen)]
