"""Reading answers back: anchored yes/no, cells, types, counts, and the dialogue metrics."""

from __future__ import annotations

import pytest

from zsad.dialogue.answer.replies import parse_yes_no
from zsad.dialogue.training.judge import (
    binary_metrics,
    location_scores,
    macro_f1,
    parse_cells,
    parse_count,
    parse_type,
)


@pytest.mark.parametrize("text, expected", [
    ("Yes, there is an anomaly at the top left.", True),
    ("Yes", True),
    ("yes.", True),
    ("  **Yes**, a scratch.", True),
    ("No, there is no anomaly in the image.", False),
    ("No defect.", False),
    ("Not defective.", False),
    ("not really, it looks fine", False),
    ("Normal.", False),
    ("normal, no anomaly", False),
    ("There is no anomaly.", False),
    ("There are no defects here, yes I am sure.", False),
    ("The bottle looks normal.", False),
    ("It is not anomalous.", False),
    ("I do not see any defect.", False),
    ("There is a scratch at the top.", True),
    ("There are two defects.", True),
    ("The image is defective.", True),
    ("Anomalous.", True),
    ("Hmm.", None),
    ("", None),
    ("Nothing wrong.", False),
])
def test_parse_yes_no_is_anchored(text, expected):
    assert parse_yes_no(text) is expected


def test_substring_traps():
    # The papers' substring test would read "no" inside these as a no; the anchored parser does not.
    assert parse_yes_no("Yes, it is not normal: a hole.") is True
    assert parse_yes_no("Yes, there is an anomaly; nothing else.") is True


def test_parse_cells():
    assert parse_cells("At the top left and the center.") == {"top left", "center"}
    assert parse_cells("upper right corner") == {"top right"}
    assert parse_cells("in the middle of the bottom") == {"center", "bottom"}
    assert parse_cells("There is no defect.") == set()
    assert parse_cells("Bottom-right.") == {"bottom right"}


def test_parse_type_and_count():
    vocab = {"scratch": ["scratch", "scuff"], "crack": ["crack", "fracture"]}
    assert parse_type("It is a scuff, maybe a crack.", vocab) == "scratch"
    assert parse_type("A fracture.", vocab) == "crack"
    assert parse_type("Unclear.", vocab) is None
    assert parse_count("There are two defects.") == 2
    assert parse_count("There is 1 defect.") == 1
    assert parse_count("There are no defects.") == 0
    assert parse_count("Some.") is None


def test_location_scores():
    assert location_scores({"top"}, {"top"}) == {"exact": 1.0, "jaccard": 1.0, "hit_neighbour": 1.0}
    s = location_scores({"top"}, {"top left"})
    assert s["exact"] == 0.0 and s["jaccard"] == 0.0 and s["hit_neighbour"] == 1.0
    assert location_scores({"bottom right"}, {"top left"})["hit_neighbour"] == 0.0
    assert location_scores({"top", "center"}, {"top"})["jaccard"] == 0.5


def test_binary_metrics_counts_unparsed_as_wrong():
    m = binary_metrics([True, False, None, True], [True, False, True, False])
    assert m["accuracy"] == 0.5 and m["unparsed"] == 0.25
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert macro_f1(["a", "b", None], ["a", "b", "b"]) == pytest.approx((1.0 + 2 / 3) / 2)


def test_eval_runner_with_ground_truth_and_grounded(tmp_path):
    import json
    import sys
    from pathlib import Path

    from zsad.data.synthetic import make_dataset

    make_dataset(tmp_path / "data", categories=["disc"], n_train_good=0, n_test_good=2, n_test_defect=3, size=64)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))
    try:
        import eval_dialogue
    finally:
        sys.path.pop(0)
    code = eval_dialogue.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                               "--detector", "ground-truth", "--hint-flip"])
    assert code == 0
    metrics = json.loads((tmp_path / "out" / "dialogue_metrics.json").read_text())["metrics"]
    # Grounded answers from ground-truth evidence must be read back exactly by the parsers.
    assert metrics["yes_no"]["accuracy"] == 1.0 and metrics["location"]["exact"] == 1.0
    assert metrics["faithfulness"]["agreement_with_detector"] == 1.0
    assert (tmp_path / "out" / "dialogue_metrics.md").is_file()

    # With an LVLM (tiny, random) the runner also reports the first-token P(yes) AUROC, a number in [0, 1].
    code = eval_dialogue.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "lvlm"),
                               "--detector", "ground-truth", "--lvlm", "tiny-random", "--device", "cpu"])
    assert code == 0
    metrics = json.loads((tmp_path / "lvlm" / "dialogue_metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["yes_no_pooled"]["auroc_first_token"] <= 1.0
    assert metrics["yes_no_pooled"]["n"] == 5


def test_covered_cells_are_the_cells_at_least_5_percent_covered():
    import numpy as np

    from zsad.dialogue.training.judge import covered_cells

    mask = np.zeros((90, 90), bool)
    mask[0:30, 0:30] = True  # the whole top-left cell
    mask[28:32, 28:32] = True  # spills into top, left and center with 2x2 = 4 px each (0.4 %): not counted
    assert covered_cells(mask) == {"top left"}
    mask[60:75, 60:90] = True  # half the bottom-right cell
    assert covered_cells(mask) == {"top left", "bottom right"}
    assert covered_cells(np.zeros((9, 9), bool)) == set()
