"""Heat-map overlays: the anomaly map in a jet colour scale over the image, with the predicted mask's contour.

Maps are drawn on the absolute [0, 1] scale, not min-max normalised per image, so a normal image stays
dark blue instead of lighting up its least-normal patch (a common complaint, anomalib #3085).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def jet(values: np.ndarray) -> np.ndarray:
    """``H x W`` values in [0, 1] -> ``H x W x 3`` uint8 in the classic jet colour map."""
    v = np.clip(values, 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    green = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    blue = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def mask_contour(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Pixels on the inner border of ``mask`` (``H x W`` bool)."""
    if not mask.any():
        return mask
    eroded = ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    return mask & ~eroded


def overlay(image: Image.Image, anomaly_map: np.ndarray, mask: np.ndarray | None = None,
            alpha: float = 0.5) -> Image.Image:
    """Blend the jet-coloured map over the image (both at the image's resolution) and draw the mask contour."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    if base.shape[:2] != anomaly_map.shape:
        raise ValueError(f"map of shape {anomaly_map.shape} does not match image of size {image.size}")
    blended = (1 - alpha) * base + alpha * jet(anomaly_map).astype(np.float32)
    out = blended.astype(np.uint8)
    if mask is not None:
        thickness = max(1, round(min(anomaly_map.shape) / 200))
        out[mask_contour(mask, thickness)] = (255, 255, 255)
    return Image.fromarray(out)
