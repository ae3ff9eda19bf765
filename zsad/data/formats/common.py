"""The ``Sample`` record and file helpers shared by every dataset format reader."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from zsad.data.images import IMAGE_EXTENSIONS
from zsad.errors import DatasetError

logger = logging.getLogger(__name__)

#: Suffixes tried for mask files, in order of preference.
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff")
#: ``defect_type`` of every normal sample, whatever the layout calls its normal folder.
NORMAL: str = "good"


@dataclass(frozen=True)
class Sample:
    """One benchmark image with its ground truth.

    ``label`` is 0 for normal and 1 for anomalous; ``mask_path`` is None for normal images
    (and for anomalous ones in layouts where masks are optional); ``defect_type`` is
    ``"good"`` for normal images; ``split`` is ``"test"`` or ``"train"``.
    """

    image_path: Path
    label: int
    mask_path: Path | None
    category: str
    defect_type: str
    split: str


def visible(path: Path) -> bool:
    """Hidden entries (``.DS_Store``, ``.ipynb_checkpoints``) are never data."""
    return not path.name.startswith(".")


def subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders sorted by name, so every listing is deterministic; [] if ``folder`` is absent."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and visible(p)), key=lambda p: p.name)


def list_images(folder: Path) -> list[Path]:
    """Visible image files directly in ``folder`` sorted by name; [] if ``folder`` is absent."""
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.name,
    )


def warn_loose_images(folder: Path, where: str) -> None:
    """Images lying next to the labelled sub-folders have no label; say so instead of dropping them silently."""
    loose = list_images(folder)
    if loose:
        logger.warning("ignored %d image(s) directly in %s: %s", len(loose), folder, where)


def index_masks(folder: Path) -> dict[str, Path]:
    """Mask files of one folder keyed by lower-case name; listed once so pairing stays linear in images."""
    if not folder.is_dir():
        return {}
    return {
        p.name.lower(): p
        for p in folder.iterdir()
        if p.is_file() and visible(p) and p.suffix.lower() in MASK_EXTENSIONS
    }


def find_mask(index: dict[str, Path], stem: str, names: tuple[str, ...], any_suffix: bool = False) -> Path | None:
    """The mask paired with image ``stem``.

    ``names`` are stem patterns such as ``"{}_mask"`` tried in order, each with every mask
    extension; with ``any_suffix``, ``<stem>_<anything>`` is accepted last (first by name).
    """
    for name in names:
        for ext in MASK_EXTENSIONS:
            hit = index.get((name.format(stem) + ext).lower())
            if hit is not None:
                return hit
    if any_suffix:
        prefix = f"{stem}_".lower()
        for key in sorted(index):
            if key.startswith(prefix):
                return index[key]
    return None


def missing_mask_error(image: Path, expected: Path) -> DatasetError:
    """An anomalous image without its mask would silently corrupt pixel metrics."""
    return DatasetError(f"mask for anomalous image {image} not found: expected {expected}")


def missing_image_error(source: str, image: Path) -> DatasetError:
    """A listed image that is not on disk; ``source`` says which file or entry listed it."""
    return DatasetError(f"{source}: image {image} does not exist")


def empty_split_error(split: str, category: str, root: Path, hint: str = "") -> DatasetError:
    """Evaluating zero images gives NaN metrics much later; stop here instead."""
    message = f"no {split} images for category {category!r} in {root}"
    return DatasetError(f"{message} ({hint})" if hint else message)
