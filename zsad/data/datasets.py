"""Benchmark dataset loaders: MVTec AD / MPDD, VisA CSV, ``meta.json``, BTAD and plain labelled folders.

Evaluation needs (image, label, mask) triples; one reader per layout (in :mod:`zsad.data.formats`)
keeps the rest of zsad unaware of how each benchmark stores its files, and every inconsistency
becomes a :class:`~zsad.errors.DatasetError` naming the file, not a NaN metric later.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image

from zsad.data.formats import folder, metajson, visa
from zsad.data.formats.common import Sample, subdirs
from zsad.data.formats.tree import BTAD, GROUND_TRUTH, MVTEC
from zsad.errors import DatasetError, ImageError, UsageError

__all__ = ["FORMATS", "SPLITS", "Dataset", "Sample", "check_mask_size", "detect_format", "load_mask", "open_dataset"]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("test", "train")
_GRAY_MODES = frozenset({"1", "L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})


@dataclass(frozen=True)
class _Reader:
    """The two operations every layout provides."""

    categories: Callable[[Path], tuple[str, ...]]
    samples: Callable[[Path, str, str], list[Sample]]


#: Format name -> reader. ``mpdd`` is MVTec's layout under its own name.
FORMATS: Mapping[str, _Reader] = MappingProxyType({
    "mvtec": _Reader(MVTEC.categories, MVTEC.samples),
    "mpdd": _Reader(MVTEC.categories, MVTEC.samples),
    "visa": _Reader(visa.categories, visa.samples),
    "metajson": _Reader(metajson.categories, metajson.samples),
    "btad": _Reader(BTAD.categories, BTAD.samples),
    "folder": _Reader(folder.categories, folder.samples),
})


def _reader(format: str) -> _Reader:
    reader = FORMATS.get(format)
    if reader is None:
        raise UsageError(f"unknown dataset format {format!r}; choose auto or one of: {', '.join(FORMATS)}")
    return reader


@dataclass(frozen=True)
class Dataset:
    """An opened benchmark root: its layout and the categories chosen from it.

    Samples are read from disk on each call, so the object stays small and immutable.
    """

    root: Path
    format: str
    categories: tuple[str, ...]

    def samples(self, category: str, split: str = "test") -> list[Sample]:
        """Samples of one category and split, in a deterministic order (folder then file name,
        or the order of the CSV / JSON file)."""
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        if category not in self.categories:
            raise _unknown_categories([category], self.root, self.categories)
        return _reader(self.format).samples(self.root, category, split)


def open_dataset(
    root: str | os.PathLike[str],
    format: str = "auto",
    categories: Sequence[str] | None = None,
) -> Dataset:
    """Open a dataset root; ``format="auto"`` detects the layout (see :func:`detect_format`).

    ``categories`` restricts the dataset (in the given order); None keeps every category.
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset root {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"dataset root {path} is not a folder")
    name = format.strip().lower()
    if name == "auto":
        name = detect_format(path)
        logger.info("detected dataset format %s for %s", name, path)
    available = _reader(name).categories(path)
    if not available:
        raise DatasetError(f"no categories found in {path} for dataset format {name}")
    return Dataset(path, name, _choose(categories, path, available))


def _choose(wanted: Sequence[str] | None, root: Path, available: tuple[str, ...]) -> tuple[str, ...]:
    if wanted is None:
        return available
    names = [wanted] if isinstance(wanted, str) else list(wanted)
    if not names:
        raise UsageError("categories is empty; pass None to use every category")
    unknown = [c for c in names if c not in available]
    if unknown:
        raise _unknown_categories(unknown, root, available)
    return tuple(dict.fromkeys(names))


def _unknown_categories(unknown: Sequence[str], root: Path, available: Sequence[str]) -> DatasetError:
    listed = ", ".join(repr(c) for c in unknown)
    return DatasetError(f"unknown category {listed} in {root}; available: {', '.join(available)}")


def detect_format(root: Path) -> str:
    """Guess the layout from the strongest evidence first: ``meta.json``, ``split_csv/1cls.csv``,
    ``ok``/``ko`` folders, category folders with ``test/`` and ``ground_truth/`` (or ``train/good``),
    else a plain labelled folder."""
    if (root / metajson.META_NAME).is_file():
        return "metajson"
    if (root / visa.CSV_PATH).is_file():
        return "visa"
    candidates = subdirs(root)
    if any((d / s / k).is_dir() for d in candidates for s in ("train", "test") for k in ("ok", "ko")):
        return "btad"
    if any((d / "test").is_dir() and ((d / GROUND_TRUTH).is_dir() or (d / "train" / "good").is_dir())
           for d in candidates):
        return "mvtec"
    if (root / "test").is_dir() and not (root / "good").is_dir():
        # One MVTec category passed as the root would otherwise look like a folder of defects
        # named train/test/ground_truth, with every image called anomalous.
        raise DatasetError(
            f"{root} looks like a single category folder (it has test/); pass its parent folder "
            f"{root.parent} and choose the category {root.name!r}, or pass the format explicitly"
        )
    return "folder"


def load_mask(path: Path | None, size: tuple[int, int], image_path: Path | None = None) -> np.ndarray:
    """The ground-truth mask as an ``H x W`` bool array (non-zero pixels are True).

    ``size`` is the image's ``(width, height)``; None gives an all-False mask of that size, and a
    mask of another size is a DatasetError (``image_path``, when given, is named in it).
    """
    width, height = size
    if path is None:
        return np.zeros((height, width), dtype=bool)
    try:
        with Image.open(path) as image:
            if image.size != (width, height):
                raise _size_error(path, image.size, image_path, (width, height))
            if image.mode in _GRAY_MODES:
                return np.asarray(image) != 0
            # Colour or palette masks: any non-zero channel marks a defect; alpha is ignored.
            return np.asarray(image.convert("RGB")).any(axis=-1)
    except FileNotFoundError:
        raise DatasetError(f"mask {path} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"mask {path} cannot be read ({exc})") from None


def check_mask_size(mask_path: Path, image_path: Path) -> None:
    """Raise DatasetError when a mask's size differs from its image's; reads headers only, so it is cheap."""
    mask_size = _header_size(mask_path)
    try:
        with Image.open(image_path) as image:
            image_size = image.size
    except OSError as exc:
        raise ImageError(image_path, f"cannot read the image header ({exc})") from None
    if mask_size != image_size:
        raise _size_error(mask_path, mask_size, image_path, image_size)


def _header_size(mask_path: Path) -> tuple[int, int]:
    try:
        with Image.open(mask_path) as image:
            return image.size
    except FileNotFoundError:
        raise DatasetError(f"mask {mask_path} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"mask {mask_path} cannot be read ({exc})") from None


def _size_error(
    mask_path: Path, mask_size: tuple[int, int], image_path: Path | None, image_size: tuple[int, int]
) -> DatasetError:
    image = f"image {image_path}" if image_path is not None else "the image"
    return DatasetError(
        f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but {image} is {image_size[0]}x{image_size[1]}"
    )
