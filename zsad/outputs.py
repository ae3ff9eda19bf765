"""Writing results as each image finishes, so a killed run keeps what it did and ``--resume`` skips it.

``results.csv`` is the commit record: a row is appended (and flushed to disk) only after the image's JSONL
record and overlay are written. On resume, a torn last line is cut off, JSONL records without a CSV row are
dropped, and every path with a row — scored or failed — is skipped, so no row is ever duplicated.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from PIL import Image

from zsad.fileio import atomic_write_text
from zsad.types import AnomalyResult
from zsad.visualize import overlay

CSV_COLUMNS = ("path", "score", "label", "defect_type", "width", "height", "error")


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline (the process died while writing it)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with path.open("r+b") as fh:
            fh.truncate(keep)


class ResultWriter:
    """Appends one CSV row and one JSONL record per image, and saves its overlay under ``maps/``."""

    def __init__(self, out_dir: str | Path, *, resume: bool = False, save_maps: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.out_dir / "results.csv"
        self.jsonl_path = self.out_dir / "results.jsonl"
        self.maps_dir = self.out_dir / "maps"
        self.save_maps = save_maps
        self.done: set[str] = set()
        self._maps_written: set[Path] = set()
        if resume:
            self._load_previous()
        else:
            for path in (self.csv_path, self.jsonl_path):
                path.unlink(missing_ok=True)
        new_csv = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._csv = self.csv_path.open("a", newline="", encoding="utf-8")
        self._jsonl = self.jsonl_path.open("a", encoding="utf-8")
        if new_csv:
            self._append_csv(CSV_COLUMNS)

    def _load_previous(self) -> None:
        _cut_torn_tail(self.csv_path)
        _cut_torn_tail(self.jsonl_path)
        if self.csv_path.exists():
            with self.csv_path.open(newline="", encoding="utf-8") as fh:
                self.done = {row["path"] for row in csv.DictReader(fh) if row.get("path")}
        if self.jsonl_path.exists():
            kept = []
            for line in self.jsonl_path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("path") in self.done:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
            atomic_write_text(self.jsonl_path, "".join(f"{line}\n" for line in kept))

    def _append_csv(self, row: Iterable[object]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(row)
        self._csv.write(buffer.getvalue())
        self._csv.flush()
        os.fsync(self._csv.fileno())

    def _append_jsonl(self, record: dict) -> None:
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def map_path(self, relative: PurePosixPath) -> Path:
        """``maps/<relative path>`` for PNG inputs, ``maps/<relative path>.png`` otherwise (``a.jpg.png``), so
        ``a.png`` and ``a.jpg`` never share an overlay; a name already used in this run gets ``__2``, ``__3``."""
        name = str(relative) if relative.suffix.lower() == ".png" else f"{relative}.png"
        target = self.maps_dir / name
        count = 1
        while target in self._maps_written:
            count += 1
            target = self.maps_dir / f"{name[:-4]}__{count}.png"
        self._maps_written.add(target)
        return target

    def write(self, result: AnomalyResult, image: Image.Image, relative: PurePosixPath) -> None:
        """Record a scored image (overlay, JSONL, then the CSV row that marks it done)."""
        record = result.to_record()
        if self.save_maps:
            target = self.map_path(relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp.png")
            overlay(image, result.anomaly_map, result.pred_mask).save(tmp)
            os.replace(tmp, target)
            record["map"] = str(target.relative_to(self.out_dir))
        self._append_jsonl(record)
        width, height = result.size
        self._append_csv((result.path, f"{result.image_score:.6f}", int(result.pred_label),
                          result.defect_type or "", width, height, ""))
        self.done.add(str(result.path))

    def write_error(self, path: str, error: str) -> None:
        """Record an image that could not be scored; the run goes on."""
        self._append_jsonl({"path": path, "error": error})
        self._append_csv((path, "", "", "", "", "", error))
        self.done.add(path)

    def close(self) -> None:
        self._csv.close()
        self._jsonl.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
