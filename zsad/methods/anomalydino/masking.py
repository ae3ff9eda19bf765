"""Zero-shot foreground masking of test patches (AnomalyDINO's ``compute_background_mask``, ``src/backbones.py``).

Why: on objects against a plain background (capsule, screw, pill; all of VisA) a background patch with an unusual
texture would otherwise raise the image score. The first principal component of one image's patch tokens separates
object from background; which side is the object is decided by the centre of the image.

Rule, as the official code: first PCA component of the ``[L, C]`` tokens (``PCA(1, svd_solver='randomized')``; here
with a fixed seed) ``> threshold`` (10); if the central crop (``border`` = 20 % off each side of the patch grid) keeps
at most 35 % of its patches, the sign is flipped (``-pc > threshold``); then a dilation and a closing with a 3 x 3
kernel. The official code applies both to the mask as an ``[L, 1]`` column (``cv2.dilate`` and ``cv2.morphologyEx``
on ``first_pc > threshold``), so the neighbours are the previous and next patch in row-major order (wrapping from
one row's end to the next row's start), not the 2-D grid; zsad does exactly that, with OpenCV's borders (pixels
outside neither dilate nor erode).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

THRESHOLD = 10.0
BORDER = 0.2
KEEP_FRACTION = 0.35
KERNEL = 3


def first_component(tokens: np.ndarray, seed: int = 0) -> np.ndarray:
    """``[L]`` projection of the tokens on their first principal component (scikit-learn's sign convention)."""
    from sklearn.decomposition import PCA

    return PCA(n_components=1, svd_solver="randomized", random_state=seed).fit_transform(
        np.asarray(tokens, dtype=np.float32))[:, 0]


def foreground_mask(tokens: np.ndarray, grid: tuple[int, int], *, threshold: float = THRESHOLD,
                    border: float = BORDER, kernel: int = KERNEL, seed: int = 0) -> np.ndarray:
    """``[L]`` bool, True on foreground patches of one image whose ``[L, C]`` tokens lie on an ``(h, w)`` grid."""
    pc = first_component(tokens, seed)
    mask = pc > threshold
    h, w = grid
    centre = mask.reshape(h, w)[int(h * border):int(h * (1 - border)), int(w * border):int(w * (1 - border))]
    if centre.sum() <= centre.size * KEEP_FRACTION:
        mask = -pc > threshold
    line = np.ones(kernel, dtype=bool)  # a 3 x 3 kernel on an [L, 1] column acts along L only
    mask = ndimage.binary_dilation(mask, structure=line, border_value=0)
    # closing = dilation then erosion; OpenCV's border leaves edges alone (erosion sees 1 outside)
    mask = ndimage.binary_dilation(mask, structure=line, border_value=0)
    return ndimage.binary_erosion(mask, structure=line, border_value=1)
