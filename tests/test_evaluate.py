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
from zsad.evaluate import AUPIMO_FPR_BOUNDS, METRIC_KEYS, EvaluateConfig, evaluate, run_signature

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
    assert set(summary) == {"method", "backbone", "activation", "aupro_variant", "categories", "mean",
                            "f1_thresholds", "n_failed", "aupimo", "defect_types", "defect_type_naming"}
    assert summary["n_failed"] == {c: 0 for c in categories}
    assert sorted(summary["categories"]) == sorted(categories)
    assert sorted(summary["f1_thresholds"]) == sorted(categories)
    assert all(set(t) == {"image", "pixel"} for t in summary["f1_thresholds"].values())
    for metrics in [*summary["categories"].values(), summary["mean"]]:
        assert set(metrics) == set(METRIC_KEYS)
        for value in metrics.values():
            assert 0.0 <= value <= 1.0
    assert summary["aupimo"]["fpr_bounds"] == [1e-5, 1e-4]
    assert sorted(summary["aupimo"]["categories"]) == sorted(categories)


def test_end_to_end_writes_metrics(dataset, tmp_path):
    out = tmp_path / "eval"
    summary = evaluate(_config(dataset, out))
    _check_summary(summary, CATEGORIES)
    assert json.loads((out / "metrics.json").read_text()) == summary
    table = (out / "metrics.md").read_text()
    assert "**mean**" in table and "aupro (mvtec)" in table and "| aupimo |" in table
    assert "AUPIMO per image" in table and "Per defect type" in table and "Defect-type naming" in table
    assert all(f"| {c} |" in table for c in CATEGORIES)
    for category in CATEGORIES:
        record = json.loads((out / "categories" / f"{category}.json").read_text())
        assert record["n_images"] == 6 and record["seconds"] >= 0
        rows = (out / "per_image" / f"{category}.csv").read_text().splitlines()
        assert rows[0] == ("path,gt_label,score,gt_defect_type,pred_defect_type,error,aupimo,top_defect_type,"
                           "mapped_defect_type") and len(rows) == 7
    assert not list(out.rglob("*.tmp"))


def test_f1_thresholds_reach_the_reported_f1_max(dataset, tmp_path):
    """Deciding the per-image scores with the reported image threshold gives exactly the reported image F1-max."""
    import csv

    from sklearn.metrics import f1_score

    out = tmp_path / "eval"
    summary = evaluate(_config(dataset, out, categories=("weave",)))
    with open(out / "per_image" / "weave.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = [int(r["gt_label"]) for r in rows]
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


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_per_type_breakdown_aupimo_and_type_naming_on_two_types(tmp_path):
    """Synthetic data with two defect types; every reported figure is recomputed from the per-image CSV."""
    from sklearn.metrics import roc_auc_score

    data = tmp_path / "data"
    make_dataset(data, categories=["grain"], n_train_good=0, n_test_good=4, n_test_defect=4,
                 defect_types=["scratch", "hole"], size=96, seed=3)
    summary = evaluate(_config(data, tmp_path / "eval"))
    rows = _csv_rows(tmp_path / "eval" / "per_image" / "grain.csv")
    per_type = summary["defect_types"]["grain"]
    assert sorted(per_type) == ["hole", "scratch"]
    normal = [r for r in rows if r["gt_label"] == "0"]
    for kind, found in per_type.items():
        mine = [r for r in rows if r["gt_defect_type"] == kind]
        assert found["n_images"] == len(mine) == 2
        chosen = normal + mine
        expected = roc_auc_score([int(r["gt_label"]) for r in chosen], [float(r["score"]) for r in chosen])
        assert found["image_auroc"] == pytest.approx(expected, abs=1e-5)  # the CSV rounds scores to 6 decimals
        assert found["aupimo"] == pytest.approx(np.mean([float(r["aupimo"]) for r in mine]), abs=1e-6)
        assert 0.0 <= found["pixel_auroc"] <= 1.0 and 0.0 <= found["aupro"] <= 1.0

    values = [float(r["aupimo"]) for r in rows if r["aupimo"]]
    assert len(values) == 4 and all(r["aupimo"] == "" for r in normal)
    stats = summary["aupimo"]["categories"]["grain"]
    assert stats["n_images"] == 4 and stats["n_undefined"] == 4
    assert stats["mean"] == pytest.approx(np.mean(values), abs=1e-6)
    assert stats["median"] == pytest.approx(np.median(values), abs=1e-6)
    assert summary["categories"]["grain"]["aupimo"] == pytest.approx(stats["mean"])

    naming = summary["defect_type_naming"]["categories"]["grain"]
    anomalous = [r for r in rows if r["gt_label"] == "1"]
    assert all(r["mapped_defect_type"] == r["gt_defect_type"] for r in anomalous)  # both are vocabulary types
    assert all(r["top_defect_type"] for r in rows)  # clip names a type for every image
    assert naming["n_images"] == 4 and naming["unmapped"] == [] and naming["mapping"] == {"hole": "hole",
                                                                                         "scratch": "scratch"}
    assert naming["accuracy"] == pytest.approx(np.mean([r["top_defect_type"] == r["gt_defect_type"]
                                                        for r in anomalous]))


def test_unmapped_and_unnamed_types_are_listed_not_guessed(tmp_path):
    """A folder named 'broken_large' (listed as unmapped) stays out of the naming scores; VisA-style 'anomaly'
    types (no type named) give no per-type breakdown."""
    import shutil

    data = tmp_path / "data"
    make_dataset(data, categories=["weave"], n_train_good=0, n_test_good=3, n_test_defect=4,
                 defect_types=["scratch", "hole"], size=64, seed=1)
    for folder in ("test", "ground_truth"):
        shutil.move(data / "weave" / folder / "hole", data / "weave" / folder / "broken_large")
    summary = evaluate(_config(data, tmp_path / "eval"))
    naming = summary["defect_type_naming"]["categories"]["weave"]
    assert naming["unmapped"] == ["broken_large"] and naming["n_images"] == 2
    assert summary["defect_type_naming"]["overall"]["unmapped"] == ["broken_large"]
    assert sorted(summary["defect_types"]["weave"]) == ["broken_large", "scratch"]
    assert "broken_large" in (tmp_path / "eval" / "metrics.md").read_text()

    for folder in ("test", "ground_truth"):
        for kind in ("scratch", "broken_large"):
            for f in (data / "weave" / folder / kind).iterdir():
                (data / "weave" / folder / "anomaly").mkdir(exist_ok=True)
                shutil.move(f, data / "weave" / folder / "anomaly" / f"{kind}_{f.name}")
            (data / "weave" / folder / kind).rmdir()
    summary = evaluate(_config(data, tmp_path / "eval2"))
    assert summary["defect_types"] == {} and summary["defect_type_naming"]["categories"] == {}


def test_aupimo_bounds_are_settings_of_the_run(dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    first = evaluate(_config(dataset, out, categories=("weave",)))
    from zsad.metrics import DEFAULT_FPR_BOUNDS

    assert tuple(first["aupimo"]["fpr_bounds"]) == AUPIMO_FPR_BOUNDS == DEFAULT_FPR_BOUNDS == (1e-5, 1e-4)
    with pytest.raises(UsageError, match=r"cannot resume.*aupimo_fpr_bounds"):
        evaluate(_config(dataset, out, categories=("weave",), aupimo_fpr_bounds=(1e-4, 1e-3), resume=True))
    with pytest.raises(UsageError, match="FPR bounds"):
        evaluate(_config(dataset, out, categories=("weave",), aupimo_fpr_bounds=(1e-3, 1e-4)))
    parser = argparse.ArgumentParser()
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "--data", str(dataset), "--method", "clip", "--backbone", "tiny-random",
                              "--image-size", "56", "--categories", "weave", "--out", str(tmp_path / "cli"),
                              "--device", "cpu", "--precision", "fp32", "--aupimo-fpr-bounds", "1e-4", "1e-2", "-q"])
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert summary["aupimo"]["fpr_bounds"] == [1e-4, 1e-2]
    assert "[0.0001, 0.01]" in capsys.readouterr().out
    # the resumed run reads the per-image values back and pools them again
    again = evaluate(_config(dataset, tmp_path / "cli", categories=("weave",), aupimo_fpr_bounds=(1e-4, 1e-2),
                             resume=True))
    assert again["aupimo"] == summary["aupimo"]
