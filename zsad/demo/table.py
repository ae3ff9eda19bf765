"""The results table: one row per image (scored or not), shown on the page and downloaded as CSV."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zsad.types import AnomalyResult

CSV_COLUMNS = ("name", "score", "label", "defect_type", "regions", "width", "height", "error")
CSV_NAME = "zsad-results.csv"
LABEL = CSV_COLUMNS.index("label")


def result_row(name: str, result: AnomalyResult) -> list[Any]:
    """The row of a decided image: its score, label, defect type, the grid cells of its regions and its size."""
    width, height = result.size
    cells = ", ".join(dict.fromkeys(r.cell for r in result.regions))
    return [name, round(result.image_score, 4), int(result.pred_label), result.defect_type or "", cells, width,
            height, ""]


def error_row(name: str, error: str | None) -> list[Any]:
    """The row of an image that could not be scored, with the reason."""
    return [name, None, None, "", "", None, None, error]


def anomalous(rows: Sequence[Sequence[Any]]) -> int:
    return sum(int(row[LABEL] or 0) for row in rows)


def write_csv(folder: Path, rows: Sequence[Sequence[Any]]) -> Path:
    """Write ``rows`` under :data:`CSV_COLUMNS` to ``folder``/:data:`CSV_NAME` (empty cells for missing values)."""
    path = folder / CSV_NAME
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path
