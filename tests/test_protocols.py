"""``evaluation/run_protocol.py``: a published protocol run on synthetic data writes its table beside the paper's."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zsad.data.synthetic import make_dataset
from zsad.evaluate import METRIC_KEYS

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "evaluation" / "run_protocol.py"


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_published_numbers_use_zsad_metric_keys_and_percent():
    protocols = yaml.safe_load((ROOT / "evaluation" / "published.yaml").read_text())
    assert {"musc-mvtec", "musc-visa", "anomalyclip-mvtec", "anomalyclip-visa", "clip-mvtec"} <= set(protocols)
    for name, p in protocols.items():
        assert set(p["numbers"]) <= set(METRIC_KEYS), name
        assert all(1.0 < v <= 100.0 for v in p["numbers"].values()), name  # percent, not fractions
        assert p["aupro_variant"] in ("mvtec", "cflow") and p["source"], name


def test_smoke_run_writes_the_comparison_and_flags_random_weights(tmp_path):
    make_dataset(tmp_path / "data", categories=["disc"], n_train_good=0, n_test_good=4, n_test_defect=3, size=64)
    done = _run("musc-mvtec", "--data", str(tmp_path / "data"), "--backbone", "tiny-random", "--image-size", "56",
                "--out", str(tmp_path / "out"), "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads((tmp_path / "out" / "comparison.json").read_text())
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    row = {r["metric"]: r for r in found["rows"]}["image_auroc"]
    assert row["published"] == 97.77
    assert row["zsad"] == pytest.approx(100 * summary["mean"]["image_auroc"], abs=0.01)
    assert row["difference"] == pytest.approx(row["zsad"] - 97.77, abs=0.01)
    assert not found["same_settings_as_published"]
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "random weights" in table and "not a reproduction" in table


def test_anomalyclip_protocol_requires_an_adapter(tmp_path):
    done = _run("anomalyclip-visa", "--data", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "needs --adapter" in done.stderr
