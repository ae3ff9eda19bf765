"""The ``zsad score`` sink: one CSV row, one JSONL record and one overlay per input, durable and resumable.

``results.csv`` is the commit record. For each input the overlay is written (temporary file, fsync, rename), then
its JSONL record is appended and fsynced, and only then is the CSV row appended and fsynced. So a killed run keeps
every finished row whole, each with its record and overlay. On resume, a torn last line is cut off, JSONL records
beyond the CSV rows (written just before a kill) are dropped, and every input whose identity — its resolved real
path, kept in the JSONL ``file`` field — has a row, scored or failed, is skipped. Rows keep the path as the user
spelled it.

Overlay names: ``maps/<path relative to the run's common folder>`` (``.png`` appended to non-PNG names, so
``a.jpg`` -> ``a.jpg.png``). A name owned by another file — in this run or a committed row of an earlier one —
gets ``__2``, ``__3`` ..., so two inputs never share an overlay and a resumed run never overwrites another
image's overlay.
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


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def common_folder(keys: Iterable[str]) -> str | None:
    """The deepest folder holding every file of ``keys`` (real paths): overlays are named relative to it."""
    parents = [os.path.dirname(k) for k in keys]
    return os.path.commonpath(parents) if parents else None


class ResultWriter:
    """Writes each input's outcome; ``done`` maps the identity of every input with a row to whether it scored."""

    def __init__(self, out_dir: str | Path, *, resume: bool = False, save_maps: bool = True,
                 map_root: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.out_dir / "results.csv"
        self.jsonl_path = self.out_dir / "results.jsonl"
        self.maps_dir = self.out_dir / "maps"
        self.save_maps = save_maps
        self.map_root = map_root
        self.done: dict[str, bool] = {}
        self._map_owner: dict[str, str] = {}  # overlay name (lower case) -> identity of the file it shows
        if resume:
            self._load_previous()
        else:
            for path in (self.csv_path, self.jsonl_path):
                path.unlink(missing_ok=True)
        new_csv = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._csv = self.csv_path.open("a", newline="", encoding="utf-8")
        self._jsonl = self.jsonl_path.open("a", encoding="utf-8")
        if new_csv:
            self._append(self._csv, _csv_line(CSV_COLUMNS))

    def _load_previous(self) -> None:
        """Rows of an earlier run: the CSV rows, paired in order with the JSONL records written just before each."""
        _cut_torn_tail(self.csv_path)
        _cut_torn_tail(self.jsonl_path)
        rows = []
        if self.csv_path.exists():
            with self.csv_path.open(newline="", encoding="utf-8") as fh:
                rows = [row for row in csv.DictReader(fh) if row.get("path")]
        lines = self.jsonl_path.read_text(encoding="utf-8").splitlines() if self.jsonl_path.exists() else []
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        by_path = {}
        for record in records:
            by_path.setdefault(record.get("path"), []).append(record)
        kept = []
        for i, row in enumerate(rows):
            # the i-th record belongs to the i-th row (each record is durable before its row); fall back to the path
            record = records[i] if i < len(records) and records[i].get("path") == row["path"] else None
            if record is None and by_path.get(row["path"]):
                record = by_path[row["path"]][0]
            if record is not None:
                kept.append(record)
            key = (record or {}).get("file") or os.path.realpath(row["path"])
            self.done[key] = not row.get("error")
            if record is not None and record.get("map"):
                self._map_owner[_map_key(record["map"])] = key
        atomic_write_text(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in kept))

    @staticmethod
    def _append(handle, text: str) -> None:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())

    def map_path(self, key: str) -> Path:
        """The overlay of the file with identity ``key`` (see the module doc); reserved for it from now on."""
        relative = None
        if self.map_root is not None:
            try:
                rel = os.path.relpath(key, self.map_root)
                if rel != ".." and not rel.startswith(".." + os.sep):
                    relative = PurePosixPath(*Path(rel).parts)
            except ValueError:  # another drive (Windows)
                relative = None
        if relative is None:
            relative = PurePosixPath(*[p for p in Path(key).parts if p not in ("/", "\\")][-1:])
        name = str(relative) if relative.suffix.lower() == ".png" else f"{relative}.png"
        candidate, count = name, 1
        while self._map_owner.get(_map_key(f"maps/{candidate}"), key) != key:
            count += 1
            candidate = f"{name[:-4]}__{count}.png"
        self._map_owner[_map_key(f"maps/{candidate}")] = key
        return self.maps_dir / candidate

    def write(self, key: str, result: AnomalyResult, image: Image.Image | None) -> None:
        """Record a scored input: overlay (when kept), JSONL record, then the CSV row that marks it done."""
        record = result.to_record()
        record["file"] = key
        if self.save_maps and image is not None:
            target = self.map_path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp.png")
            overlay(image, result.anomaly_map, result.pred_mask).save(tmp)
            _fsync_file(tmp)
            os.replace(tmp, target)
            record["map"] = target.relative_to(self.out_dir).as_posix()
        self._append(self._jsonl, json.dumps(record) + "\n")
        width, height = result.size
        self._append(self._csv, _csv_line((result.path, f"{result.image_score:.6f}", int(result.pred_label),
                                           result.defect_type or "", width, height, "")))
        self.done[key] = True

    def write_error(self, key: str, path: str, error: str) -> None:
        """Record an input that could not be scored; the run goes on."""
        self._append(self._jsonl, json.dumps({"path": path, "error": error, "file": key}) + "\n")
        self._append(self._csv, _csv_line((path, "", "", "", "", "", error)))
        self.done[key] = False

    def close(self) -> None:
        self._csv.close()
        self._jsonl.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _csv_line(row: Iterable[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return buffer.getvalue()


def _map_key(map_field: str) -> str:
    return map_field.replace("\\", "/").lower()
