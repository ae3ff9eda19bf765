"""``meta.json``, the interchange format of APRIL-GAN, AnomalyCLIP, AdaCLIP and ADer.

``{"train"|"test": {cls: [{"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}]}}``
with paths relative to the root. ``img_path``, ``mask_path`` and ``anomaly`` are required;
``specie_name`` becomes the defect type when present. Samples keep the file's order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zsad.data.formats.common import NORMAL, Sample, empty_split_error, missing_image_error, missing_mask_error
from zsad.errors import DatasetError

META_NAME = "meta.json"
SPLITS: tuple[str, ...] = ("train", "test")
REQUIRED_KEYS: tuple[str, ...] = ("img_path", "mask_path", "anomaly")
ANOMALY = "anomaly"


def read_meta(root: Path) -> dict[str, dict[str, Any]]:
    """The parsed file, checked down to the per-class lists."""
    path = root / META_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the JSON ({exc})") from None
    if not isinstance(data, dict) or not any(split in data for split in SPLITS):
        raise DatasetError(f"{path}: expected an object with key(s) 'train' and/or 'test'")
    for split in SPLITS:
        classes = data.get(split, {})
        if not isinstance(classes, dict) or not all(isinstance(v, list) for v in classes.values()):
            raise DatasetError(f"{path}: {split!r} must map each class name to a list of entries")
    return data


def categories(root: Path) -> tuple[str, ...]:
    """Class names of both splits, sorted."""
    data = read_meta(root)
    return tuple(sorted({name for split in SPLITS for name in data.get(split, {})}))


def samples(root: Path, category: str, split: str) -> list[Sample]:
    """The entries of ``data[split][category]``, in file order."""
    path = root / META_NAME
    entries = read_meta(root).get(split, {}).get(category, [])
    result = [_sample(root, f"{path}: {split}/{category} entry {i}", entry, category, split)
              for i, entry in enumerate(entries)]
    if not result:
        raise empty_split_error(split, category, root, f"no entries in {path}")
    return result


def _sample(root: Path, where: str, entry: Any, category: str, split: str) -> Sample:
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        raise DatasetError(f"{where}: missing key(s) {', '.join(missing)}")
    label = _label(where, entry["anomaly"])
    image = root / str(entry["img_path"])
    if not image.is_file():
        raise missing_image_error(where, image)
    if label == 0:
        return Sample(image, 0, None, category, NORMAL, split)
    if not entry["mask_path"]:
        raise DatasetError(f"{where}: anomalous image {image} has an empty mask_path")
    mask = root / str(entry["mask_path"])
    if not mask.is_file():
        raise missing_mask_error(image, mask)
    defect = str(entry.get("specie_name") or ANOMALY)
    return Sample(image, 1, mask, category, ANOMALY if defect == NORMAL else defect, split)


def _label(where: str, value: Any) -> int:
    """``anomaly`` is 0/1 (bools and "0"/"1" strings tolerated)."""
    if isinstance(value, bool):
        return int(value)
    if value in (0, 1, "0", "1"):
        return int(value)
    raise DatasetError(f"{where}: 'anomaly' must be 0 or 1, got {value!r}")
