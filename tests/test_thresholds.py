"""Thresholds from known-good images: the quantile rule, re-deciding results, and ``zsad score --threshold-from``."""

import json

import numpy as np
import pytest

from zsad.cli import main
from zsad.data.synthetic import make_dataset
from zsad.decisions import Thresholds, decide, redecide, thresholds_from_good
from zsad.errors import UsageError
from zsad.types import RawOutput


def _result(score: float, peak: float, size=(16, 12)):
    amap = np.zeros(size[::-1], np.float32)
    amap[2:5, 3:7] = peak
    return decide(RawOutput(image_score=score, anomaly_map=amap, method="m", defect_probs={"hole": 1.0}), Thresholds(0.5))


def test_quantile_one_flags_no_good_image():
    good = [_result(s, p) for s, p in [(0.2, 0.3), (0.4, 0.9), (0.3, 0.6)]]
    found = thresholds_from_good(good, quantile=1.0)
    assert found.image > 0.4 and found.image == pytest.approx(0.4)
    assert found.pixel > max(float(r.anomaly_map.max()) for r in good) and found.pixel == pytest.approx(0.9)
    decided = [redecide(r, found) for r in good]
    assert not any(r.pred_label for r in decided)
    assert not any(r.pred_mask.any() for r in decided)
    assert thresholds_from_good(good, quantile=0.5).image == pytest.approx(0.3)


def test_redecide_redecides_label_mask_and_type_without_rescoring():
    result = _result(0.45, 0.8)
    assert not result.pred_label and result.defect_type is None and result.pred_mask.sum() == 12
    again = redecide(result, Thresholds(0.4, 0.9))
    assert again.pred_label and again.defect_type == "hole"
    assert not again.pred_mask.any() and again.regions == []
    assert again.extras["pixel_threshold"] == 0.9
    np.testing.assert_array_equal(again.anomaly_map, result.anomaly_map)
    assert redecide(again, Thresholds(0.5)).extras.get("pixel_threshold") is None


@pytest.mark.parametrize("quantile", [-0.1, 1.5])
def test_bad_quantile_and_no_good_images_are_usage_errors(quantile):
    with pytest.raises(UsageError, match="quantile"):
        thresholds_from_good([_result(0.1, 0.1)], quantile)
    with pytest.raises(UsageError, match="at least one"):
        thresholds_from_good([])


@pytest.fixture(scope="module")
def carpet(tmp_path_factory):
    root = tmp_path_factory.mktemp("thr")
    make_dataset(root, categories=["carpet"], n_train_good=5, n_test_good=2, n_test_defect=2, size=96, seed=3)
    return root / "carpet"


def _rows(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_score_with_threshold_from_good_clip(carpet, tmp_path, capsys):
    good = carpet / "train" / "good"
    out = tmp_path / "o"
    code = main(["score", str(good), "--method", "clip", "--backbone", "tiny-random", "--image-size", "56",
                 "--threshold-from", str(good), "--good-quantile", "1", "--out", str(out), "-q", "--no-maps"])
    assert code == 0
    assert "thresholds from 5 good images (quantile 1)" in capsys.readouterr().err
    rows = _rows(out)
    assert len(rows) == 5 and all(r["label"] == 0 for r in rows)  # the good images themselves pass
    assert len({r["threshold"] for r in rows}) == 1


def test_score_with_threshold_from_good_musc_scores_good_images_in_the_batch(carpet, tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["score", str(carpet / "test"), "--method", "musc", "--backbone", "tiny-random", "--image-size", "56",
                 "--threshold-from", str(carpet / "train" / "good"), "--out", str(out), "-q", "--no-maps"])
    assert code == 0  # 4 test images alone are too few for musc; the 5 good ones join the batch
    err = capsys.readouterr().err
    printed = float(err.split("image ")[1].split(",")[0])
    rows = _rows(out)
    assert len(rows) == 4 and all("train" not in r["path"] for r in rows)
    assert {round(r["threshold"], 4) for r in rows} == {printed}


def test_threshold_from_an_empty_folder_is_a_usage_error(carpet, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["score", str(carpet / "test"), "--method", "clip", "--backbone", "tiny-random", "--image-size", "56",
                 "--threshold-from", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "-q"])
    assert code == 2
    assert "zsad: error:" in capsys.readouterr().err


def test_good_images_among_the_inputs_are_not_scored_twice_under_musc(carpet, tmp_path, capsys):
    """An image next to its own copy would score ~0 under mutual scoring: shared good images join once."""
    good = carpet / "train" / "good"
    out = tmp_path / "o"
    code = main(["score", str(good), str(carpet / "test"), "--method", "musc", "--backbone", "tiny-random",
                 "--image-size", "56", "--threshold-from", str(good), "--good-quantile", "1", "--out", str(out),
                 "-q", "--no-maps"])
    assert code == 0
    assert "thresholds from 5 good images (quantile 1)" in capsys.readouterr().err
    rows = _rows(out)
    assert len(rows) == 9  # 5 good + 4 test, each once
    good_rows = [r for r in rows if "/train/good/" in r["path"]]
    assert len(good_rows) == 5 and all(r["label"] == 0 for r in good_rows)
    # every good image is an input, so nothing joins: the batch, hence every score, is that of a plain run
    plain = tmp_path / "plain"
    assert main(["score", str(good), str(carpet / "test"), "--method", "musc", "--backbone", "tiny-random",
                 "--image-size", "56", "--out", str(plain), "-q", "--no-maps"]) == 0
    expected = {r["path"]: r["score"] for r in _rows(plain)}
    assert {r["path"]: r["score"] for r in rows} == pytest.approx(expected, abs=1e-6)
