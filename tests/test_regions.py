import numpy as np
import pytest

from zsad.decisions import Thresholds, decide
from zsad.scoring.regions import find_regions, grid_cell
from zsad.types import GRID_CELLS, RawOutput


@pytest.mark.parametrize("x, y, cell", [
    (0, 0, "top left"), (50, 5, "top"), (99, 0, "top right"), (10, 50, "left"), (50, 50, "center"),
    (90, 50, "right"), (0, 99, "bottom left"), (50, 99, "bottom"), (99, 99, "bottom right"),
])
def test_grid_cells(x, y, cell):
    assert grid_cell(x, y, 100, 100) == cell


def test_regions_of_a_hand_made_mask():
    mask = np.zeros((90, 120), dtype=bool)
    mask[5:15, 4:24] = True       # 200 px, top left
    mask[70:80, 100:105] = True   # 50 px, bottom right
    amap = mask.astype(np.float32) * 0.8
    regions = find_regions(mask, amap)
    assert [r.cell for r in regions] == ["top left", "bottom right"]
    first = regions[0]
    assert first.bbox == (4, 5, 24, 15)
    assert first.area_fraction == pytest.approx(200 / (90 * 120))
    assert first.centroid == pytest.approx((13.5, 9.5))
    assert first.peak_score == pytest.approx(0.8)
    assert set(GRID_CELLS) >= {r.cell for r in regions}


def test_diagonal_pixels_are_one_region():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2, 2] = mask[3, 3] = mask[4, 4] = True
    assert len(find_regions(mask, mask.astype(np.float32))) == 1


def test_build_result_thresholds_and_names_defect_only_when_anomalous():
    amap = np.zeros((20, 30), dtype=np.float32)
    amap[:5, :5] = 0.9
    result = decide(RawOutput(image_score=0.7, anomaly_map=amap, method="m",
                              defect_probs={"hole": 0.6, "crack": 0.4}), Thresholds(0.5))
    assert result.pred_label and result.defect_type == "hole"
    assert result.pred_mask.sum() == 25 and result.regions[0].cell == "top left"
    normal = decide(RawOutput(image_score=0.2, anomaly_map=np.zeros((20, 30), np.float32), method="m",
                              defect_probs={"hole": 0.6}), Thresholds(0.5))
    assert not normal.pred_label and normal.defect_type is None and normal.regions == []
    assert normal.defect_probs == {"hole": 0.6}
    assert decide(RawOutput(image_score=1.7, anomaly_map=amap, method="m"), Thresholds(0.5)).image_score == 1.0
