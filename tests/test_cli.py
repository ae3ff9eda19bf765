import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zsad.cli import main
from zsad.outputs import CSV_COLUMNS

FAST = ["--backbone", "tiny-random", "--image-size", "56", "-q"]


def _folder(tmp_path, rng, n=4):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(n):
        target = folder / ("sub" if i % 2 else ".") / f"img{i}.png"
        Image.fromarray((rng.random((40 + i, 60, 3)) * 255).astype(np.uint8)).save(target)
    return folder


def _rows(out):
    with (out / "results.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_score_writes_csv_jsonl_and_maps(tmp_path, rng, capsys):
    folder, out = _folder(tmp_path, rng), tmp_path / "out"
    assert main(["score", str(folder), "--out", str(out), *FAST]) == 0
    with (out / "results.csv").open() as fh:
        assert fh.readline().strip() == ",".join(CSV_COLUMNS)
    rows = _rows(out)
    assert len(rows) == 4 and all(r["error"] == "" for r in rows)
    assert {r["height"] for r in rows} == {"40", "41", "42", "43"}
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == [r["path"] for r in rows]
    assert all("regions" in r and "defect_probs" in r for r in records)
    assert (out / "maps" / "img0.png").is_file() and (out / "maps" / "sub" / "img1.png").is_file()
    assert Image.open(out / "maps" / "sub" / "img1.png").size == (60, 41)
    err = capsys.readouterr().err
    assert "random weights" in err and "4 images: 4 scored" in err


def test_resume_after_interrupted_run_never_duplicates(tmp_path, rng):
    folder, out = _folder(tmp_path, rng), tmp_path / "out"
    assert main(["score", str(folder), "--out", str(out), *FAST]) == 0
    full = _rows(out)
    # simulate a run killed after two images, in the middle of writing the third row
    lines = (out / "results.csv").read_text().splitlines(keepends=True)
    (out / "results.csv").write_text("".join(lines[:3]) + lines[3][:10])
    jsonl = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(jsonl[:3]))
    assert main(["score", str(folder), "--out", str(out), "--resume", *FAST]) == 0
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == sorted(r["path"] for r in full)
    assert rows[:2] == full[:2]
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(r["path"] for r in full)
    # resuming a finished run scores nothing and changes nothing
    before = (out / "results.csv").read_text()
    assert main(["score", str(folder), "--out", str(out), "--resume", *FAST]) == 0
    assert (out / "results.csv").read_text() == before


def test_bad_images_become_error_rows_and_the_run_goes_on(tmp_path, rng, capsys):
    folder, out = _folder(tmp_path, rng, n=2), tmp_path / "out"
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    good = folder / "img0.png"
    (folder / "truncated.png").write_bytes(good.read_bytes()[:60])
    Image.fromarray((rng.random((30, 30)) * 65535).astype(np.uint16)).save(folder / "deep16.png")
    Image.fromarray((rng.random((20, 20, 4)) * 255).astype(np.uint8), "RGBA").save(folder / "alpha.png")
    Image.new("CMYK", (20, 20), (10, 20, 30, 0)).save(folder / "cmyk.tif")
    Image.new("P", (1, 1)).save(folder / "tiny.png")
    Image.new("L", (400, 2)).save(folder / "thin.png")
    code = main(["score", str(folder), "--out", str(out), *FAST])
    assert code == 1
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in _rows(out)}
    assert rows["empty.png"]["error"].startswith("empty file")
    assert "not an image" in rows["notes.png"]["error"]
    assert "truncated" in rows["truncated.png"]["error"] or "corrupt" in rows["truncated.png"]["error"]
    for name in ("img0.png", "img1.png", "deep16.png", "alpha.png", "cmyk.tif", "tiny.png", "thin.png"):
        assert rows[name]["error"] == "" and rows[name]["score"] != ""
    err = capsys.readouterr().err
    assert "Traceback" not in err and "3 failed" in err
    assert (out / "maps" / "cmyk.tif.png").is_file()


def test_oversized_image_is_refused_with_a_clear_message(tmp_path, rng):
    folder, out = _folder(tmp_path, rng, n=1), tmp_path / "out"
    Image.new("RGB", (300, 300)).save(folder / "big.png")
    assert main(["score", str(folder), "--out", str(out), "--max-pixels", "10000", *FAST]) == 1
    row = next(r for r in _rows(out) if r["path"].endswith("big.png"))
    assert "decompression-bomb" in row["error"]


@pytest.mark.parametrize("args, message", [
    (["score", "/no/such/path"], "does not exist"),
    (["score", "EMPTY"], "no images found"),
    (["score", "IMG", "--backbone", "NoNet:openai"], "unknown backbone architecture"),
    (["score", "IMG", "--backbone", "tiny-random", "--image-size", "50"], "multiple of the patch size"),
    (["score", "IMG", "--backbone", "tiny-random", "--prompts", "/no/prompts.yaml"], "does not exist"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, rng, capsys, args, message):
    (tmp_path / "empty").mkdir()
    image = tmp_path / "x.png"
    Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(image)
    args = [str(tmp_path / "empty") if a == "EMPTY" else str(image) if a == "IMG" else a for a in args]
    assert main([*args, "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("zsad: error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_unknown_method_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["score", "x.png", "--method", "nope"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_models_lists_methods_and_backbones(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "clip" in out and "ViT-L-14-336:openai" in out and "tiny-random" in out


def test_make_synthetic_writes_mvtec_layout(tmp_path):
    root = tmp_path / "syn"
    assert main(["make-synthetic", str(root), "--categories", "weave", "--n-train-good", "1",
                 "--n-test-good", "1", "--n-test-defect", "2", "--size", "64"]) == 0
    assert (root / "weave" / "train" / "good").is_dir()
    assert list((root / "weave" / "ground_truth").rglob("*_mask.png"))


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "zsad", "models"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "tiny-random" in done.stdout
