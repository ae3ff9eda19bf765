"""The ``zsad score`` sink: one CSV row, one JSONL record and one overlay per input, durable and resumable.

``results.csv`` is the commit record. For each input the overlay is written (temporary file, fsync, rename), then
its JSONL record is appended and fsynced, and only then is the CSV row appended and fsynced. So a killed run keeps
every finished row whole, each with its record and overlay. On resume, a torn last line is cut off, JSONL records
beyond the CSV rows (written just before a kill) are dropped, and every input whose identity — its resolved real
path, kept in the JSONL ``file`` field — has a row, scored or failed, is skipped. Rows keep the path as the user
spelled it.

An overlay's temporary file (``.NAME.PID.tmp.png``) left by a run killed before its rename is removed when the
next run opens the folder (a run owns its output folder).

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
import re
import shutil
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
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


_TMP_OVERLAY = re.compile(r"^\..+\.\d+\.tmp\.png$")  # .NAME.PID.tmp.png


def _remove_temporary_overlays(out_dir: Path, owned: Container[str]) -> None:
    """Delete overlays' temporary files of runs killed between writing and renaming them (``owned``: the map
    fields of committed rows, kept even if an input's own name looks like a temporary file)."""
    maps_dir = out_dir / "maps"
    if not maps_dir.is_dir():
        return
    for path in maps_dir.rglob(".*.tmp.png"):
        if _TMP_OVERLAY.match(path.name) and path.is_file() and \
                _map_key(path.relative_to(out_dir).as_posix()) not in owned:
            path.unlink(missing_ok=True)


def common_folder(keys: Iterable[str]) -> str | None:
    """The deepest folder holding every file of ``keys`` (real paths): overlays are named relative to it."""
    parents = [os.path.dirname(k) for k in keys]
    return os.path.commonpath(parents) if parents else None


@dataclass(frozen=True)
class CommittedRow:
    """One finished row: its CSV values, its JSONL record (None if lost) and the input's identity."""

    values: dict[str, str]
    record: dict | None
    key: str


@dataclass(frozen=True)
class Committed:
    rows: list[CommittedRow]

    @property
    def records(self) -> list[dict]:
        return [row.record for row in self.rows if row.record is not None]


def read_committed(folder: Path, *, repair: bool = True) -> Committed:
    """The finished rows in ``folder``: CSV rows paired in order with the JSONL records written just before each
    (falling back to the path). ``repair`` cuts a torn last line (the process died while writing it)."""
    csv_path, jsonl_path = folder / "results.csv", folder / "results.jsonl"
    if repair:
        _cut_torn_tail(csv_path)
        _cut_torn_tail(jsonl_path)
    rows = []
    if csv_path.exists():
        with csv_path.open(newline="", encoding="utf-8") as fh:
            text = fh.read()
        if not repair and text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        rows = [row for row in csv.DictReader(io.StringIO(text)) if row.get("path")]
    lines = jsonl_path.read_text(encoding="utf-8").splitlines() if jsonl_path.exists() else []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    by_path: dict[str, list[dict]] = {}
    for record in records:
        by_path.setdefault(record.get("path"), []).append(record)
    out = []
    for i, row in enumerate(rows):
        # the i-th record belongs to the i-th row (each record is durable before its row); fall back to the path
        record = records[i] if i < len(records) and records[i].get("path") == row["path"] else None
        if record is None and by_path.get(row["path"]):
            record = by_path[row["path"]][0]
        key = (record or {}).get("file") or os.path.realpath(row["path"])
        out.append(CommittedRow(values=dict(row), record=record, key=key))
    return Committed(out)


def merge_shards(out_dir: Path, shards: Iterable[Path], order: Sequence[str]) -> int:
    """Append the rows of rank shards to ``out_dir``'s results (each input once, in ``order`` of identities), then
    remove the shards. Idempotent: rows already merged are not added again, so a merge interrupted by a kill is
    simply done again. Returns the number of rows added."""
    committed = read_committed(out_dir)
    have = {row.key for row in committed.rows}
    position = {key: i for i, key in enumerate(order)}
    new: dict[str, CommittedRow] = {}
    shards = [Path(s) for s in shards]
    for shard in shards:
        for row in read_committed(shard, repair=False).rows:
            if row.key not in have and row.key not in new:
                new[row.key] = row
    added = sorted(new.values(), key=lambda r: (position.get(r.key, len(position)), r.key))
    rows = committed.rows + added
    atomic_write_text(out_dir / "results.jsonl", "".join(json.dumps(r.record) + "\n" for r in rows
                                                         if r.record is not None))
    atomic_write_text(out_dir / "results.csv", _csv_line(CSV_COLUMNS) + "".join(
        _csv_line(r.values.get(c, "") for c in CSV_COLUMNS) for r in rows))
    for shard in shards:
        shutil.rmtree(shard, ignore_errors=True)
    return len(added)


class RunOutputs:
    """Where one ``zsad score`` run writes: ``OUT`` directly in one process; with several ranks each writes its own
    shard (``OUT/.shards/rank-K/``, overlays straight into ``OUT/maps``) and rank 0 merges the shards into
    ``OUT/results.csv`` / ``results.jsonl`` in input order at the end. A resumed run first merges what the shards
    of a killed run hold, so no finished row is lost or written twice."""

    def __init__(self, out_dir: str | Path, keys: Sequence[str], *, resume: bool, save_maps: bool, dist) -> None:
        self.out_dir = Path(out_dir)
        self.keys = list(keys)
        self.resume = resume
        self.save_maps = save_maps
        self.dist = dist
        self.writer: ResultWriter | None = None

    def shard(self, rank: int) -> Path:
        return self.out_dir / ".shards" / f"rank-{rank}"

    def __enter__(self) -> ResultWriter:
        root = common_folder(self.keys)
        if not self.dist.active:
            self.writer = ResultWriter(self.out_dir, resume=self.resume, save_maps=self.save_maps, map_root=root,
                                       planned=self.keys)
            return self.writer
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.dist.check_shared_folder(self.out_dir)
        if self.dist.is_main:
            shards = sorted((self.out_dir / ".shards").glob("rank-*"))
            if self.resume:
                merge_shards(self.out_dir, shards, self.keys)  # rows of a killed run's ranks
            else:
                for path in [self.out_dir / "results.csv", self.out_dir / "results.jsonl", *shards]:
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            ResultWriter(self.out_dir, resume=True, save_maps=self.save_maps).close()  # repairs, cleans overlays
        self.dist.barrier("preparing the output folder")
        self.writer = ResultWriter(self.shard(self.dist.rank), save_maps=self.save_maps, map_root=root,
                                   planned=self.keys, maps_root=self.out_dir, committed_in=self.out_dir)
        return self.writer

    def __exit__(self, kind, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()
        if kind is None and self.dist.active:
            self.dist.barrier("waiting for every rank's rows")
            if self.dist.is_main:
                merge_shards(self.out_dir, [self.shard(r) for r in range(self.dist.world_size)], self.keys)
                shutil.rmtree(self.out_dir / ".shards", ignore_errors=True)
            self.dist.barrier("merging the rows")

    def final_state(self) -> dict[str, bool]:
        """Identity -> scored, for every input with a row in ``OUT`` (after the merge)."""
        return {row.key: not row.values.get("error") for row in read_committed(self.out_dir, repair=False).rows}


class ResultWriter:
    """Writes each input's outcome; ``done`` maps the identity of every input with a row to whether it scored."""

    def __init__(self, out_dir: str | Path, *, resume: bool = False, save_maps: bool = True,
                 map_root: str | None = None, planned: Iterable[str] = (), maps_root: str | Path | None = None,
                 committed_in: str | Path | None = None) -> None:
        """``planned``: the identities of all the run's inputs in input order — their overlay names are reserved
        up front, so every rank of a multi-process run names them alike. ``maps_root``: the folder holding
        ``maps/`` (default ``out_dir``). ``committed_in``: read the finished rows from this folder instead (a
        rank's shard writer reads the merged results of earlier runs there and writes its rows to ``out_dir``)."""
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.out_dir / "results.csv"
        self.jsonl_path = self.out_dir / "results.jsonl"
        self.maps_root = Path(maps_root) if maps_root is not None else self.out_dir
        self.maps_dir = self.maps_root / "maps"
        self.save_maps = save_maps
        self.map_root = map_root
        self.done: dict[str, bool] = {}
        self._map_owner: dict[str, str] = {}  # overlay name (lower case) -> identity of the file it shows
        if committed_in is not None:
            self._take_committed(read_committed(Path(committed_in), repair=False))
        if resume and committed_in is None:
            self._load_previous()
        else:
            for path in (self.csv_path, self.jsonl_path):
                path.unlink(missing_ok=True)
        if committed_in is None:  # a rank's shard writer leaves them to rank 0 (others may be writing theirs)
            _remove_temporary_overlays(self.maps_root, self._map_owner)
        for key in planned:
            self.map_path(key)
        new_csv = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._csv = self.csv_path.open("a", newline="", encoding="utf-8")
        self._jsonl = self.jsonl_path.open("a", encoding="utf-8")
        if new_csv:
            self._append(self._csv, _csv_line(CSV_COLUMNS))

    def _load_previous(self) -> None:
        """Rows of an earlier run (:func:`read_committed`); JSONL records without their CSV row are dropped."""
        committed = read_committed(self.out_dir)
        self._take_committed(committed)
        atomic_write_text(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in committed.records))

    def _take_committed(self, committed: Committed) -> None:
        for row in committed.rows:
            self.done[row.key] = not row.values.get("error")
            if row.record is not None and row.record.get("map"):
                self._map_owner[_map_key(row.record["map"])] = row.key

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
            try:
                overlay(image, result.anomaly_map, result.pred_mask).save(tmp, format="PNG")
                _fsync_file(tmp)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            record["map"] = target.relative_to(self.maps_root).as_posix()
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
