"""From patch distances to AnomalyDINO's outputs: the image score and the full-size map.

- image score ``mean_top1p`` (dammsi/AnomalyDINO ``src/post_eval.py``): the mean of the largest 1 % of the patch
  distances (``int(0.01 * L)`` of them; the maximum when that is 0), masked-out patches counted as 0;
- map ``dists2map`` (``src/utils.py``): the patch grid resized bilinearly (``cv2.resize`` ``INTER_LINEAR``: half-pixel
  centres, as ``align_corners=False``) to the ORIGINAL image's size, then ``gaussian_filter(sigma=4)``; computed in
  float64 as the official code's ``np.zeros_like(mask, dtype=float)`` grid is.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

SIGMA = 4.0
TOP_FRACTION = 0.01


def mean_top(distances: torch.Tensor | np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Mean of the largest ``int(fraction * n)`` values, or the largest value when that count is 0."""
    values = np.asarray(distances, dtype=np.float64).ravel()
    count = int(len(values) * fraction)
    if count == 0:
        return float(values.max())
    return float(np.sort(values)[::-1][:count].mean())


def distance_map(grid: torch.Tensor | np.ndarray, size: tuple[int, int], sigma: float = SIGMA) -> np.ndarray:
    """``(h, w)`` patch distances -> ``H x W`` float32 map for an original image of ``size = (width, height)``."""
    width, height = size
    g = torch.as_tensor(np.asarray(grid, dtype=np.float64))[None, None]
    up = F.interpolate(g, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    if sigma > 0:
        up = ndimage.gaussian_filter(up, sigma=sigma)
    return up.astype(np.float32)
