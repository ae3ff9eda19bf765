"""VisA: ``<root>/split_csv/1cls.csv`` lists every image with its split, label and mask.

Columns ``object,split,label,image,mask``; labels are ``normal``/``anomaly``; paths are
relative to the root; the mask is empty for normal images. Samples keep the CSV's order.
"""

from __future__ import annotations

import csv
from pathlib import Path

from zsad.data.formats.common import NORMAL, Sample, empty_split_error, missing_image_error, missing_mask_error
from zsad.errors import DatasetError

CSV_PATH = Path("split_csv") / "1cls.csv"
COLUMNS: tuple[str, ...] = ("object", "split", "label", "image", "mask")
LABELS: dict[str, int] = {"normal": 0, "anomaly": 1}
#: VisA names no defect types; anomalous samples get this one.
ANOMALY = "anomaly"


def read_rows(root: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` pairs with stripped values; a missing file or column is a DatasetError."""
    path = root / CSV_PATH
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = [name.strip() for name in (reader.fieldnames or [])]
            missing = [c for c in COLUMNS if c not in fields]
            if missing:
                raise DatasetError(
                    f"{path}: missing column(s) {', '.join(missing)}; expected a header {','.join(COLUMNS)}"
                )
            reader.fieldnames = fields
            return [
                (reader.line_num, {k: (row.get(k) or "").strip() for k in COLUMNS})
                for row in reader
            ]
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist; a VisA root needs split_csv/1cls.csv") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read the CSV ({exc})") from None


def categories(root: Path) -> tuple[str, ...]:
    """Distinct ``object`` values, sorted."""
    return tuple(sorted({row["object"] for _, row in read_rows(root) if row["object"]}))


def samples(root: Path, category: str, split: str) -> list[Sample]:
    """The CSV rows of ``category`` and ``split``, in file order."""
    path = root / CSV_PATH
    result = []
    for line, row in read_rows(root):
        if row["object"] != category or row["split"] != split:
            continue
        where = f"{path} line {line}"
        label = LABELS.get(row["label"].lower())
        if label is None:
            raise DatasetError(f"{where}: label {row['label']!r} is neither 'normal' nor 'anomaly'")
        image = root / row["image"]
        if not image.is_file():
            raise missing_image_error(where, image)
        mask = None
        if label == 1:
            if not row["mask"]:
                raise DatasetError(f"{where}: anomalous image {image} has an empty mask column")
            mask = root / row["mask"]
            if not mask.is_file():
                raise missing_mask_error(image, mask)
        result.append(Sample(image, label, mask, category, ANOMALY if label else NORMAL, split))
    if not result:
        raise empty_split_error(split, category, root, f"no rows in {path}")
    return result
