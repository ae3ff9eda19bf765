"""A plain labelled folder: ``good/`` is normal, every other sub-folder is an anomaly type.

Masks are optional, per defect folder: ``<root>/masks/<defect>/<stem>[_*].png`` or
``<root>/ground_truth/<defect>/<stem>_mask.png``. When a mask folder exists for a defect,
every image of that defect needs a mask; when none exists, its samples have no mask.
The whole folder is one category named after the root folder; it has only a test split.
"""

from __future__ import annotations

import logging
from pathlib import Path

from zsad.data.formats.common import (
    NORMAL,
    Sample,
    empty_split_error,
    find_mask,
    index_masks,
    list_images,
    missing_mask_error,
    subdirs,
    warn_loose_images,
)

logger = logging.getLogger(__name__)

#: Sub-folders that hold masks, with their mask name patterns in order of preference.
MASK_DIRS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("masks", ("{}", "{}_mask")),
    ("ground_truth", ("{}_mask", "{}")),
)


def category_name(root: Path) -> str:
    """The single category: the root folder's name (resolved, so ``.`` works too)."""
    return root.resolve().name or "folder"


def categories(root: Path) -> tuple[str, ...]:
    """Always one category."""
    return (category_name(root),)


def samples(root: Path, category: str, split: str) -> list[Sample]:
    """Samples sorted by folder then file name."""
    if split != "test":
        raise empty_split_error(split, category, root, "the folder format has only a test split")
    mask_dir_names = {name for name, _ in MASK_DIRS}
    label_dirs = [d for d in subdirs(root) if d.name not in mask_dir_names]
    if NORMAL not in {d.name for d in label_dirs}:
        logger.warning("%s has no %s/ folder: every image in it is treated as anomalous", root, NORMAL)
    warn_loose_images(root, f"only images inside {NORMAL}/ or a defect folder are used")
    result: list[Sample] = []
    for label_dir in label_dirs:
        if label_dir.name == NORMAL:
            result.extend(Sample(p, 0, None, category, NORMAL, split) for p in list_images(label_dir))
        else:
            result.extend(_anomalous(root, label_dir, category, split))
    if not result:
        raise empty_split_error(split, category, root)
    return result


def _anomalous(root: Path, defect_dir: Path, category: str, split: str) -> list[Sample]:
    images = list_images(defect_dir)
    mask_dirs = [(root / name / defect_dir.name, names) for name, names in MASK_DIRS]
    mask_dirs = [(folder, names) for folder, names in mask_dirs if folder.is_dir()]
    indexes = [(folder, index_masks(folder), names) for folder, names in mask_dirs]
    result = []
    for image in images:
        mask = None
        for _, index, names in indexes:
            mask = find_mask(index, image.stem, names, any_suffix=True)
            if mask is not None:
                break
        if mask is None and indexes:
            folder, _, names = indexes[0]
            raise missing_mask_error(image, folder / f"{names[0].format(image.stem)}.png")
        result.append(Sample(image, 1, mask, category, defect_dir.name, split))
    return result
