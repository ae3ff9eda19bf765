"""Connected components of a predicted mask, described in words a person uses (3x3 grid cells)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from zsad.types import GRID_CELLS, Region

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def grid_cell(x: float, y: float, width: int, height: int) -> str:
    """Name of the 3x3 grid cell containing the point ``(x, y)`` of a ``width x height`` image."""
    col = min(2, max(0, int(3 * x / max(width, 1))))
    row = min(2, max(0, int(3 * y / max(height, 1))))
    return GRID_CELLS[row * 3 + col]


def find_regions(mask: np.ndarray, anomaly_map: np.ndarray, max_regions: int = 20) -> list[Region]:
    """8-connected components of ``mask`` (``H x W`` bool), largest first, at most ``max_regions``."""
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return []
    height, width = mask.shape
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(np.ones_like(mask, dtype=np.int64), labels, index)
    peaks = ndimage.maximum(anomaly_map, labels, index)
    means = ndimage.mean(anomaly_map, labels, index)
    centroids = ndimage.center_of_mass(mask, labels, index)
    slices = ndimage.find_objects(labels)
    order = np.argsort(-np.asarray(areas), kind="stable")[:max_regions]
    regions = []
    for i in order:
        rows, cols = slices[i]
        cy, cx = centroids[i]
        regions.append(
            Region(
                bbox=(int(cols.start), int(rows.start), int(cols.stop), int(rows.stop)),
                area_fraction=float(areas[i]) / float(height * width),
                centroid=(float(cx), float(cy)),
                cell=grid_cell(cx, cy, width, height),
                peak_score=float(peaks[i]),
                mean_score=float(means[i]),
            )
        )
    return regions
