"""Fault injection for ``zsad score``: runs killed with SIGKILL at several points and resumed through other
spellings of the same inputs, same-named files in different folders, ``--group-by folder`` over same-named
subfolders, NaN/inf in a method's numbers (an error row, never a silent "normal") and internal errors (exit 3).

Kill points are found by polling the outputs (complete lines of ``results.csv`` / ``results.jsonl``, an overlay's
temporary file), not by sleeping, so the tests do not depend on the speed of the machine; wherever a kill lands,
what must hold is:

- exactly one CSV row per input (scored or error): no duplicates, none missing;
- the JSONL records pair 1:1 with the CSV rows, in order (same path; same score; error records for error rows);
- every scored input has its own overlay at its own size, and ``maps/`` holds nothing else (no temp files);
- rows committed before a kill are kept as they were; scores equal those of one uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsad.cli import main

posix = pytest.mark.skipif(not hasattr(signal, "SIGKILL") or os.name != "posix",
                           reason="needs POSIX signals and symlinks")

FAST = ["--backbone", "tiny-random", "--image-size", "56", "--device", "cpu", "--batch-size", "2", "-q"]
BAD_FILES = ("empty.png", "truncated.png", "x.png")  # an empty file, a truncated PNG, a text file named x.png


_DETECTORS: dict = {}


@pytest.fixture(autouse=True)
def _one_detector_per_configuration(monkeypatch):
    """In-process runs share one detector per configuration (building clip's text embeddings costs ~1.5 s each
    time); a detector keeps no state between runs, and the killed runs are separate processes anyway."""
    import zsad

    create = zsad.create

    def shared(method="clip", **kwargs):
        key = (method, repr(sorted(kwargs.items())))
        if key not in _DETECTORS:
            _DETECTORS[key] = create(method, **kwargs)
        return _DETECTORS[key]

    monkeypatch.setattr(zsad, "create", shared)


# -- inputs and outputs --------------------------------------------------------------------------------------

def _write_inputs(folder: Path, n_good: int, seed: int = 0) -> dict[str, tuple[int, int] | None]:
    """``n_good`` images of distinct sizes (so an overlay's size tells whose it is) plus the bad files.

    Returns real path -> (width, height), or None for a file that cannot be read."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    inputs: dict[str, tuple[int, int] | None] = {}
    for i in range(n_good):
        width, height = 40 + 3 * i, 30 + 2 * i
        path = folder / f"img{i:02d}.png"
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(path)
        inputs[os.path.realpath(path)] = (width, height)
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes((folder / "img00.png").read_bytes()[:60])
    (folder / "x.png").write_text("this is not an image\n")
    for name in BAD_FILES:
        inputs[os.path.realpath(folder / name)] = None
    return inputs


def _complete_lines(path: Path) -> int:
    """Lines of ``path`` that end with a newline (the committed ones); -1 while the file does not exist."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return -1


def _committed(path: Path) -> bytes:
    data = path.read_bytes() if path.exists() else b""
    return data[:data.rfind(b"\n") + 1]


def _jsonl_lines(out: Path) -> int:
    return _complete_lines(out / "results.jsonl")


def _temporary_overlay(out: Path) -> bool:
    try:
        return any(e.name.endswith(".tmp.png") for e in os.scandir(out / "maps"))
    except FileNotFoundError:
        return False


def _kill_when(args: list[str], cwd: Path, trigger, log: Path, *, must_kill: bool) -> bool:
    """Start ``python -m zsad score ARGS`` and SIGKILL it as soon as ``trigger()`` is true; whether it was killed.

    The child computes on one thread, leaving a core to this poller on a two-core machine. A child that ends
    before the trigger fires must have ended normally (exit 1: bad files)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "zsad", "score", *args], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 300
        try:
            while True:
                if trigger():  # before poll(): a run that fired the trigger is killed, whether or not it ended
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.0005)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    expected = (-signal.SIGKILL,) if must_kill else (-signal.SIGKILL, 1)
    assert proc.returncode in expected, f"exit {proc.returncode}:\n" + log.read_text(errors="replace")
    return killed


def _rows(out: Path) -> list[dict]:
    data = (out / "results.csv").read_text(encoding="utf-8")
    assert data.endswith("\n")
    return list(csv.DictReader(io.StringIO(data)))


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def _map_files(out: Path) -> dict[str, bytes]:
    maps = out / "maps"
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in maps.rglob("*") if p.is_file()}


def _check_outputs(out: Path, inputs: dict[str, tuple[int, int] | None], cwds: list[Path]) -> list[dict]:
    """The invariants of the module doc; ``cwds`` are the folders relative row paths may be relative to."""
    rows, records = _rows(out), _records(out)
    assert len(rows) == len(records)
    files = [r["file"] for r in records]
    assert len(set(files)) == len(files), "an input has two rows"
    assert set(files) == set(inputs), "an input has no row (or a row names something else)"
    maps = set()
    for row, rec in zip(rows, records):
        assert row["path"] == rec["path"]
        assert rec["file"] in {os.path.realpath(os.path.join(c, row["path"])) for c in cwds}
        size = inputs[rec["file"]]
        if size is None:
            assert row["error"] and rec.get("error") == row["error"] and row["score"] == "" and "map" not in rec
        else:
            assert row["error"] == "" and "error" not in rec, row["error"]
            assert abs(float(row["score"]) - rec["score"]) <= 1e-6
            assert (int(row["width"]), int(row["height"])) == (rec["width"], rec["height"]) == size
            assert rec["map"] not in maps, f"two inputs share the overlay {rec['map']}"
            maps.add(rec["map"])
            with Image.open(out / rec["map"]) as overlay:
                assert overlay.size == size, f"{rec['map']} shows another image"
    # nothing else in maps/: no temporary files of a killed run, no overlay that no row owns
    assert set(_map_files(out)) == maps
    return records


def _scores_by_name(records: list[dict]) -> dict[str, float]:
    return {os.path.basename(r["file"]): r["score"] for r in records if "error" not in r}


# -- killed and resumed runs ---------------------------------------------------------------------------------

@posix
@pytest.mark.parametrize("method, mid_kill", [("clip", "record"), ("musc", "overlay")])
def test_killed_runs_resume_to_one_row_per_input(tmp_path, monkeypatch, method, mid_kill):
    root = tmp_path
    inputs = _write_inputs(root / "imgs", 11)
    (root / "link").symlink_to(root / "imgs", target_is_directory=True)
    out = root / "out"
    csv_path = out / "results.csv"
    options = ["--method", method, "--out", str(out), *FAST]
    kept = []

    # 1. a fresh run through the absolute path, killed as soon as the CSV header is committed: before any row
    #    (the first row needs a backbone pass), or at worst a row or two later; what follows holds either way
    _kill_when([str(root / "imgs"), *options], root, lambda: _complete_lines(csv_path) >= 1, root / "run1.log",
               must_kill=True)
    kept.append(_committed(csv_path))

    # 2. resumed through a relative spelling (cwd = root) and killed mid-run:
    #    "record": once 4 more JSONL records are durable, usually between an image's record and its CSV row (the
    #    record must be dropped on resume); "overlay": while an overlay's temporary file exists (the next run must
    #    remove it), or, if the poller never sees one, after 6 more rows (3 may be errors)
    rows_start = _complete_lines(csv_path)
    if mid_kill == "record":
        trigger = lambda: _jsonl_lines(out) >= rows_start - 1 + 4  # noqa: E731
    else:
        trigger = lambda: _temporary_overlay(out) or _complete_lines(csv_path) >= rows_start + 6  # noqa: E731
    _kill_when(["imgs", *options, "--resume"], root, trigger, root / "run2.log", must_kill=False)
    kept.append(_committed(csv_path))

    # a temporary overlay as a run killed between writing and renaming it leaves (step 2 of "overlay" usually
    # leaves a real one): the next run must remove it
    (out / "maps").mkdir(exist_ok=True)
    (out / "maps" / ".img07.png.999999.tmp.png").write_bytes(b"half an overlay")

    # 3. resumed through a symlinked folder, to the end: bad files are error rows, so the exit code is 1
    monkeypatch.chdir(root)
    assert main(["score", "link", *options, "--resume"]) == 1
    records = _check_outputs(out, inputs, [root])
    final = csv_path.read_bytes()
    for prefix in kept:  # rows committed before a kill are kept as they were
        assert final.startswith(prefix)

    # 4. resumed once more through the absolute path: nothing left to do, nothing changes
    snapshot = (final, (out / "results.jsonl").read_bytes(), _map_files(out))
    assert main(["score", str(root / "imgs"), *options, "--resume"]) == 1
    assert (csv_path.read_bytes(), (out / "results.jsonl").read_bytes(), _map_files(out)) == snapshot

    # the good images alone, in one uninterrupted run: exit 0 and the same scores (musc: the same joint batch)
    good = root / "good"
    good.mkdir()
    for path, size in inputs.items():
        if size is not None:
            shutil.copy(path, good)
    assert main(["score", str(good), "--method", method, "--out", str(root / "ref"), *FAST]) == 0
    reference = _scores_by_name(_records(root / "ref"))
    resumed = _scores_by_name(records)
    assert set(resumed) == set(reference)
    for name, score in reference.items():
        assert resumed[name] == pytest.approx(score, abs=1e-5), name


# -- overlay names -------------------------------------------------------------------------------------------

def _image(path: Path, size: tuple[int, int], value: int) -> tuple[str, tuple[int, int]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(path)
    return os.path.realpath(path), size


def test_same_file_names_in_two_folders_get_distinct_overlays(tmp_path, monkeypatch):
    inputs = dict([_image(tmp_path / "lineA" / "x.png", (50, 40), 10),
                   _image(tmp_path / "lineB" / "x.png", (70, 30), 200),
                   _image(tmp_path / "lineA" / "sub" / "x.png", (36, 44), 90)])
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(["score", "lineA/", "lineB/", "--method", "clip", "--out", str(out), *FAST]) == 0
    records = _check_outputs(out, inputs, [tmp_path])
    assert len({r["map"] for r in records}) == 3


@posix
def test_a_resume_with_another_spelling_never_overwrites_another_images_overlay(tmp_path, monkeypatch):
    root = tmp_path / "root"
    a_x = _image(root / "lineA" / "x.png", (50, 40), 10)
    a_nested = _image(root / "lineA" / "lineB" / "x.png", (44, 52), 60)  # named lineB/x.png relative to lineA
    b_x = _image(root / "lineB" / "x.png", (70, 30), 200)
    top_x = _image(root / "x.png", (38, 58), 120)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    options = ["--method", "clip", "--out", str(out), *FAST]

    assert main(["score", "root/lineA", *options]) == 0  # overlays maps/x.png and maps/lineB/x.png
    before = _map_files(out)
    assert set(before) == {"maps/x.png", "maps/lineB/x.png"}

    # lineB alone names its x.png "x.png", which lineA's x.png owns
    assert main(["score", str(root / "lineB"), *options, "--resume"]) == 0
    after = _map_files(out)
    assert {k: after[k] for k in before} == before  # nothing of the earlier run rewritten
    _check_outputs(out, dict([a_x, a_nested, b_x]), [tmp_path])

    # the whole tree, through a symlink: root/x.png is "x.png" and lineB/x.png is "lineB/x.png", both owned
    (tmp_path / "alias").symlink_to(root, target_is_directory=True)
    assert main(["score", "alias", *options, "--resume"]) == 0
    final = _map_files(out)
    assert {k: final[k] for k in after} == after
    _check_outputs(out, dict([a_x, a_nested, b_x, top_x]), [tmp_path])
    assert len(final) == 4


# -- groups --------------------------------------------------------------------------------------------------

@posix
def test_group_by_folder_groups_by_the_real_parent_folder(tmp_path, monkeypatch):
    """lineA/test/good and lineB/test/good share their relative name but are two categories."""
    from zsad.data.synthetic import make_sample
    from zsad.runner import group_sources, sources_from_inputs

    rng = np.random.default_rng(3)
    for i in range(5):
        folder_a, folder_b = tmp_path / "lineA" / "test" / "good", tmp_path / "lineB" / "test" / "good"
        folder_a.mkdir(parents=True, exist_ok=True)
        folder_b.mkdir(parents=True, exist_ok=True)
        make_sample("grain", None, size=(64, 48), rng=rng).image.save(folder_a / f"{i:03d}.png")
        Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(folder_b / f"{i:03d}.png")
    (tmp_path / "linkB").symlink_to(tmp_path / "lineB", target_is_directory=True)
    monkeypatch.chdir(tmp_path)

    groups = group_sources(sources_from_inputs(["lineA/", "linkB/"]), "folder")
    assert [name for name, _ in groups] == [os.path.realpath(tmp_path / line / "test" / "good")
                                            for line in ("lineA", "lineB")]
    assert [len(members) for _, members in groups] == [5, 5]

    options = ["--method", "musc", *FAST]
    assert main(["score", "lineA/", "linkB/", "--group-by", "folder", "--out", "grouped", *options]) == 0
    grouped = {r["file"]: r for r in _records(tmp_path / "grouped")}
    assert len(grouped) == 10 and len({r["map"] for r in grouped.values()}) == 10
    for line in ("lineA", "lineB"):  # each folder scored alone gives the same scores and maps
        assert main(["score", f"{line}/test/good", "--out", f"alone-{line}", *options]) == 0
        for rec in _records(tmp_path / f"alone-{line}"):
            assert grouped[rec["file"]]["score"] == pytest.approx(rec["score"], abs=1e-5)
            assert grouped[rec["file"]]["map"] == f"maps/{line}/test/good/{os.path.basename(rec['file'])}"
    # and grouping matters: the ten images scored as one batch score differently
    assert main(["score", "lineA/", "linkB/", "--out", "together", *options]) == 0
    together = {r["file"]: r["score"] for r in _records(tmp_path / "together")}
    assert max(abs(together[f] - grouped[f]["score"]) for f in together) > 1e-3


# -- NaN / inf and internal errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["backbone-nan", "map-pixel-nan", "score-inf"])
def test_nan_or_inf_is_an_error_row_not_a_normal_image(tmp_path, monkeypatch, capsys, where):
    from zsad.backbones.clip import ClipBackbone
    from zsad.methods.clip import ClipMethod

    _write_inputs(tmp_path / "imgs", 4)
    for name in BAD_FILES:
        os.remove(tmp_path / "imgs" / name)
    target = (43, 32)  # img01
    if where == "backbone-nan":  # NaN pixels for one image: the NaN flows through the whole network
        original = ClipBackbone.preprocess

        def preprocess(self, images):
            batch = original(self, images)
            for i, image in enumerate(images):
                if image.size == target:
                    batch[i, :, 5:9, 5:9] = float("nan")
            return batch

        monkeypatch.setattr(ClipBackbone, "preprocess", preprocess)
    else:
        original = ClipMethod.raw_one

        def raw_one(self, ev, index, size, **kwargs):
            raw = original(self, ev, index, size, **kwargs)
            if tuple(size) == target:
                if where == "map-pixel-nan":  # one pixel of the full-size map; the score itself is finite
                    raw.anomaly_map = raw.anomaly_map.copy()
                    raw.anomaly_map[3, 7] = np.nan
                else:
                    raw.image_score = float("inf")
            return raw

        monkeypatch.setattr(ClipMethod, "raw_one", raw_one)
    out = tmp_path / "out"
    assert main(["score", str(tmp_path / "imgs"), "--method", "clip", "--out", str(out), *FAST]) == 1
    rows = {os.path.basename(r["path"]): r for r in _rows(out)}
    assert len(rows) == 4
    bad = rows["img01.png"]
    assert bad["score"] == "" and bad["label"] == ""
    assert ("NaN" in bad["error"] or "inf" in bad["error"]) and "--precision fp32" in bad["error"]
    assert all(rows[n]["error"] == "" and rows[n]["score"] != "" for n in ("img00.png", "img02.png", "img03.png"))
    record = next(r for r in _records(out) if r["path"].endswith("img01.png"))
    assert record["error"] == bad["error"] and "map" not in record
    assert not (out / "maps" / "img01.png").exists()
    assert "img01.png" in capsys.readouterr().err


def test_a_nan_good_image_is_left_out_of_the_thresholds_not_the_end_of_the_run(tmp_path, monkeypatch, capsys,
                                                                              caplog):
    from zsad.backbones.clip import ClipBackbone

    _write_inputs(tmp_path / "imgs", 3)
    for name in BAD_FILES:
        os.remove(tmp_path / "imgs" / name)
    good = tmp_path / "good"
    good.mkdir()
    rng = np.random.default_rng(5)
    for i, size in enumerate([(60, 44), (61, 44), (62, 44)]):
        Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(good / f"g{i}.png")
    original = ClipBackbone.preprocess

    def preprocess(self, images):
        batch = original(self, images)
        for i, image in enumerate(images):
            if image.size == (61, 44):
                batch[i] = float("nan")
        return batch

    monkeypatch.setattr(ClipBackbone, "preprocess", preprocess)
    out = tmp_path / "out"
    code = main(["score", str(tmp_path / "imgs"), "--threshold-from", str(good), "--method", "clip", "--out",
                 str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 0, err
    warned = caplog.text + err  # the logging warning (on stderr outside pytest)
    assert "leaving out 1 of 3" in warned and "--precision fp32" in warned
    assert "thresholds from 2 good images" in err
    rows = _rows(out)
    assert len(rows) == 3 and all(r["error"] == "" and r["score"] != "" for r in rows)


@pytest.mark.parametrize("method, where, name", [("clip", None, "gaussian_smooth"),
                                                 ("musc", "zsad.methods.musc.msm", "mutual_scores")])
def test_an_internal_error_exits_3_with_the_traceback_in_a_log(tmp_path, monkeypatch, capsys, method, where, name):
    from zsad.methods import method_class

    _write_inputs(tmp_path / "imgs", 5)

    def deep_failure(*args, **kwargs):
        raise RuntimeError("planted failure deep in the scoring code")

    # the function as its caller looks it up: clip's map smoothing in the method's own module; musc's one MSM pass
    # in msm.py, which exact and repeat-aware mutual scoring in one process both go through
    module = sys.modules[where or method_class(method).__module__]
    assert callable(getattr(module, name))
    monkeypatch.setattr(module, name, deep_failure)
    out = tmp_path / "out"
    code = main(["score", str(tmp_path / "imgs"), "--method", method, "--out", str(out), *FAST])
    assert code == 3
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "internal error" in line]
    assert len(lines) == 1
    assert "RuntimeError: planted failure deep in the scoring code" in lines[0] and "zsad-error.log" in lines[0]
    assert "Traceback" not in err
    log = (out / "zsad-error.log").read_text()
    assert log.startswith("Traceback") and "deep_failure" in log and "planted failure" in log
