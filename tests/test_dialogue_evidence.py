"""Evidence: the documented size/confidence words, masks to regions, results to evidence, text and JSON forms."""

import json

import numpy as np
import pytest

from zsad.decisions import Thresholds, decide
from zsad.dialogue.evidence import Evidence, confidence_word, evidence_from_mask, evidence_from_result, size_word
from zsad.types import GRID_CELLS, RawOutput


def test_size_and_confidence_words_follow_the_documented_rules():
    assert [size_word(a) for a in (0.001, 0.01, 0.05, 0.5)] == ["tiny", "small", "medium", "large"]
    assert [size_word(a) for a in (0.005, 0.02, 0.10)] == ["small", "medium", "large"]  # bounds are exclusive
    assert confidence_word(0.3, 0.5, anomalous=False) == "not suspicious"
    assert confidence_word(0.55, 0.5, anomalous=True) == "slightly suspicious"  # margin 0.1
    assert confidence_word(0.75, 0.5, anomalous=True) == "moderately suspicious"  # margin 0.5
    assert confidence_word(0.95, 0.5, anomalous=True) == "highly suspicious"  # margin 0.9
    assert confidence_word(None, None, anomalous=True) == "highly suspicious"


def test_mask_components_are_eight_connected_largest_first_with_exclusive_boxes():
    mask = np.zeros((100, 100), bool)
    mask[10, 10] = mask[11, 11] = True  # diagonal neighbours: one component of 2 px
    mask[60:90, 60:90] = True  # 900 px, bottom right
    evidence = evidence_from_mask(mask, "hole", class_name="tile")
    assert len(evidence.regions) == 2
    big, small = evidence.regions
    assert big.cell == "bottom right" and big.bbox == (60, 60, 90, 90) and big.area_fraction == pytest.approx(0.09)
    assert small.cell == "top left" and small.bbox == (10, 10, 12, 12) and small.size == "tiny"
    assert evidence.image_size == (100, 100) and evidence.score is None and evidence.defect_type == "hole"
    filtered = evidence_from_mask(mask, "hole", min_area_fraction=0.001)
    assert [r.cell for r in filtered.regions] == ["bottom right"]
    gone = evidence_from_mask(mask, "hole", min_area_fraction=0.5)
    assert not gone.anomalous and gone.defect_type is None and gone.confidence == "not suspicious"


def test_every_grid_cell_is_reachable():
    h, w = 90, 120
    seen = set()
    for row in range(3):
        for col in range(3):
            mask = np.zeros((h, w), bool)
            y, x = row * h // 3 + h // 6, col * w // 3 + w // 6
            mask[y - 2:y + 2, x - 2:x + 2] = True
            seen |= evidence_from_mask(mask).cells()
    assert seen == set(GRID_CELLS)


def test_evidence_from_result_follows_the_decision():
    amap = np.zeros((60, 90), np.float32)
    amap[40:55, 70:85] = 0.9  # bottom right
    result = decide(RawOutput(image_score=0.8, anomaly_map=amap, method="m",
                          defect_probs={"scratch": 0.7, "hole": 0.3}), Thresholds(0.5))
    evidence = evidence_from_result(result, class_name="bottle")
    assert evidence.anomalous and evidence.confidence == "moderately suspicious"
    assert evidence.cells() == {"bottom right"} and evidence.regions[0].bbox == (70, 40, 85, 55)
    assert evidence.regions[0].peak_score == pytest.approx(0.9)
    assert evidence.defect_type == "scratch" and evidence.defect_prob == pytest.approx(0.7)
    assert evidence.image_size == (90, 60) and evidence.class_name == "bottle"
    text = evidence.to_text()
    assert "0.80" in text and "0.50" in text and "bottom right" in text and "scratch (p=0.70)" in text
    normal = evidence_from_result(decide(RawOutput(image_score=0.2, anomaly_map=amap, method="m",
                                               defect_probs={"scratch": 0.9}), Thresholds(0.5)))
    assert not normal.anomalous and normal.regions == () and normal.defect_type is None
    assert "no defect found" in normal.to_text() and "not suspicious" in normal.to_text()


def test_to_dict_is_json_serialisable_and_round_trips():
    mask = np.zeros((40, 40), bool)
    mask[0:8, 30:40] = True
    evidence = evidence_from_mask(mask, "crack")
    record = json.loads(json.dumps(evidence.to_dict()))
    assert record["regions"][0]["cell"] == "top right" and record["defect_type"] == "crack"
    assert Evidence.__dataclass_params__.frozen
    with pytest.raises(AttributeError):
        evidence.anomalous = False  # type: ignore[misc]
