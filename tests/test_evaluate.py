"""``zsad.evaluate``: end-to-end benchmark runs on a tiny synthetic dataset with a random backbone."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from zsad.cli.evaluate import add_parser as add_evaluate_parser
from zsad.data.datasets import open_dataset
from zsad.data.synthetic import make_dataset
from zsad.errors import DatasetError, UsageError
from zsad.evaluate import METRIC_KEYS, EvaluateConfig, evaluate, run_signature

CATEGORIES = ("weave", "disc")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(root, categories=list(CATEGORIES), n_train_good=3, n_test_good=3, n_test_defect=3, size=64, seed=0)
    return root


def _config(data: Path, out: Path, **changes) -> EvaluateConfig:
    base = dict(data=data, out=out, method="clip", backbone="tiny-random", image_size=56, device="cpu",
                precision="fp32", batch_size=4, progress=False)
    base.update(changes)
    return EvaluateConfig(**base)


def _check_summary(summary: dict, categories: tuple[str, ...]) -> None:
    assert set(summary) == {"method", "backbone", "aupro_variant", "categories", "mean", "f1_thresholds", "n_failed"}
    assert summary["n_failed"] == {c: 0 for c in categories}
    assert sorted(summary["categories"]) == sorted(categories)
    assert sorted(summary["f1_thresholds"]) == sorted(categories)
    assert all(set(t) == {"image", "pixel"} for t in summary["f1_thresholds"].values())
    for metrics in [*summary["categories"].values(), summary["mean"]]:
        assert set(metrics) == set(METRIC_KEYS)
        for value in metrics.values():
            assert 0.0 <= value <= 1.0


def test_end_to_end_writes_metrics(dataset, tmp_path):
    out = tmp_path / "eval"
    summary = evaluate(_config(dataset, out))
    _check_summary(summary, CATEGORIES)
    assert json.loads((out / "metrics.json").read_text()) == summary
    table = (out / "metrics.md").read_text()
    assert "**mean**" in table and "aupro (mvtec)" in table
    assert all(f"| {c} |" in table for c in CATEGORIES)
    for category in CATEGORIES:
        record = json.loads((out / "categories" / f"{category}.json").read_text())
        assert record["n_images"] == 6 and record["seconds"] >= 0
        rows = (out / "per_image" / f"{category}.csv").read_text().splitlines()
        assert rows[0] == "path,label,score,defect_type,pred_defect_type,error" and len(rows) == 7
    assert not list(out.rglob("*.tmp"))


def test_f1_thresholds_reach_the_reported_f1_max(dataset, tmp_path):
    """Deciding the per-image scores with the reported image threshold gives exactly the reported image F1-max."""
    import csv

    from sklearn.metrics import f1_score

    out = tmp_path / "eval"
    summary = evaluate(_config(dataset, out, categories=("weave",)))
    with open(out / "per_image" / "weave.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = [int(r["label"]) for r in rows]
    threshold = summary["f1_thresholds"]["weave"]["image"]
    decided = [int(float(r["score"]) >= threshold - 5e-7) for r in rows]  # the CSV rounds scores to 6 decimals
    assert f1_score(labels, decided) == pytest.approx(summary["categories"]["weave"]["image_f1_max"], abs=1e-9)
    assert "F1-optimal thresholds" in (out / "metrics.md").read_text()


def test_musc_scores_a_category_jointly(dataset, tmp_path):
    summary = evaluate(_config(dataset, tmp_path / "musc", method="musc", categories=("disc",),
                               aupro_variant="cflow"))
    _check_summary(summary, ("disc",))
    assert summary["aupro_variant"] == "cflow"


def test_resume_skips_finished_categories(dataset, tmp_path):
    out = tmp_path / "eval"
    first = evaluate(_config(dataset, out))
    kept = out / "categories" / "weave.json"
    lost = out / "categories" / "disc.json"
    kept_mtime = kept.stat().st_mtime_ns
    lost.unlink()  # as if the run had been interrupted during "disc"
    second = evaluate(_config(dataset, out, resume=True))
    assert kept.stat().st_mtime_ns == kept_mtime
    assert lost.is_file()
    assert second["categories"]["weave"] == first["categories"]["weave"]
    _check_summary(second, CATEGORIES)


def test_resume_refuses_other_settings(dataset, tmp_path):
    out = tmp_path / "eval"
    evaluate(_config(dataset, out, categories=("weave",)))
    with pytest.raises(UsageError, match=r"cannot resume.*image_size: 56 -> 28.*--overwrite"):
        evaluate(_config(dataset, out, categories=("weave",), image_size=28, resume=True))
    fresh = evaluate(_config(dataset, out, categories=("weave",), image_size=28, overwrite=True))
    assert fresh["categories"]["weave"] is not None
    with pytest.raises(UsageError, match="exclude each other"):
        evaluate(_config(dataset, out, categories=("weave",), resume=True, overwrite=True))


def test_resume_refuses_a_changed_prompt_file_and_data_root(dataset, tmp_path):
    import shutil

    from zsad.resources import data_dir

    prompts = tmp_path / "prompts.yaml"
    shutil.copy(data_dir("prompts", "states.yaml") / "states.yaml", prompts)
    out = tmp_path / "eval"
    evaluate(_config(dataset, out, categories=("weave",), method_options={"prompts": str(prompts)}))
    again = evaluate(_config(dataset, out, categories=("weave",), method_options={"prompts": str(prompts)},
                             resume=True))
    assert again["categories"]["weave"] is not None  # unchanged: resumed
    prompts.write_text(prompts.read_text() + "\n# edited\n")
    with pytest.raises(UsageError, match="cannot resume.*prompts changed"):
        evaluate(_config(dataset, out, categories=("weave",), method_options={"prompts": str(prompts)},
                         resume=True))
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    with pytest.raises(UsageError, match="cannot resume.*data:"):
        evaluate(_config(copy, out, categories=("weave",), method_options={"prompts": str(prompts)}, resume=True))


def test_an_unreadable_test_image_is_a_row_left_out_of_the_metrics(dataset, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    broken = sorted((copy / "weave" / "test").glob("*/*.png"))[-1]
    broken.write_bytes(b"not a png")
    out = tmp_path / "eval"
    for method in ("clip", "musc"):
        summary = evaluate(_config(copy, out / method, method=method, categories=("weave",)))
        assert summary["n_failed"] == {"weave": 1}
        record = json.loads((out / method / "categories" / "weave.json").read_text())
        assert record["n_images"] == 6 and record["n_failed"] == 1
        rows = list(csv.DictReader((out / method / "per_image" / "weave.csv").open()))
        assert len(rows) == 6
        bad = [r for r in rows if r["error"]]
        assert [r["path"] for r in bad] == [str(broken)] and bad[0]["score"] == ""
        assert "not an image" in bad[0]["error"] or "corrupt" in bad[0]["error"]
        assert all(r["score"] for r in rows if not r["error"])


def test_unknown_category_is_a_clear_error(dataset, tmp_path):
    with pytest.raises(DatasetError, match="unknown category 'nope'.*available"):
        evaluate(_config(dataset, tmp_path / "eval", categories=("weave", "nope")))
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_threshold_from_good_is_within_good_scores(dataset):
    import zsad

    detector = zsad.create("clip", backbone="tiny-random", image_size=56, device="cpu", precision="fp32",
                           warn_random=False)
    good = sorted((dataset / "weave" / "train" / "good").glob("*.png"))
    scores = [r.image_score for r in detector.score(good)]
    threshold = detector.thresholds_from_good(good, quantile=0.9).image
    assert min(scores) <= threshold <= max(scores)
    assert detector.thresholds_from_good(good, quantile=1.0).image == pytest.approx(max(scores))
    with pytest.raises(UsageError):
        detector.thresholds_from_good(good, quantile=1.5)
    with pytest.raises(UsageError):
        detector.thresholds_from_good([])
    musc = zsad.create("musc", backbone="tiny-random", image_size=56, device="cpu", precision="fp32",
                       warn_random=False)
    with pytest.raises(UsageError, match="relative to its batch"):
        musc.thresholds_from_good(good)


def test_parser_builds_the_config(dataset, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "--data", str(dataset), "--method", "clip", "--backbone", "tiny-random",
                              "--image-size", "56", "--categories", "weave", "--out", str(tmp_path / "cli"),
                              "--device", "cpu", "--precision", "fp32", "--aupro-variant", "cflow", "-q"])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "| weave |" in table and "**mean**" in table
    summary = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert np.isfinite(list(summary["mean"].values())).all()


def test_signature_follows_the_adapter_weights_not_just_its_path(dataset, tmp_path):
    import torch

    from zsad.adapters import save_adapter

    folder = tmp_path / "adapter"
    save_adapter(folder, "anomalyclip-prompts", {}, {"w": torch.zeros(3)})
    config = _config(dataset, tmp_path / "out", method="anomalyclip", method_options={"adapter": str(folder)})
    dataset = open_dataset(dataset)
    before = run_signature(config, dataset)
    save_adapter(folder, "anomalyclip-prompts", {}, {"w": torch.ones(3)})  # retrained into the same folder
    after = run_signature(config, dataset)
    assert after != before and after["method_options"] == before["method_options"]
    save_adapter(folder, "anomalyclip-prompts", {"taps": [1]}, {"w": torch.ones(3)})  # same weights, other settings
    assert run_signature(config, dataset) != after
