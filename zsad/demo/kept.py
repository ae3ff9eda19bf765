"""One scored image as a session keeps it: what the page shows in memory, the full-resolution map on disk.

A 4096 x 4096 image's decided result holds 9 bytes per pixel (raw float32 map, clipped float32 map, bool mask):
150 MB, times 32 images per visitor. The page only draws pictures of at most ``display_side`` pixels, so a session
keeps, per image, the picture and its heat map at that size (uint8 RGB + uint8 map: 4 bytes per display pixel,
at most 1 MiB at the default 512) and the score numbers; the method's raw full-resolution map goes to the
session's folder as ``.npy`` and is read back (memory-mapped) to decide again with ``zsad.decisions.decide`` when
the threshold moves or a question is asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zsad.types import AnomalyResult, RawOutput


def display_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """``(width, height)`` scaled down (never up) so that the longer side is at most ``side``."""
    width, height = size
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class KeptImage:
    """A scored image: score numbers, display-size picture and heat map, and where its raw map is on disk."""

    image_score: float
    method: str
    size: tuple[int, int]  # (width, height) of the original image
    picture: np.ndarray = field(repr=False)  # display-size H x W x 3 uint8
    heat: np.ndarray = field(repr=False)  # display-size H x W uint8: the decided map (clipped to [0, 1]) x 255
    map_file: Path = field(repr=False)  # the raw H x W float32 map at full resolution
    defect_probs: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def keep(cls, result: AnomalyResult, image: Image.Image, map_file: Path, side: int) -> KeptImage:
        """Write ``result``'s raw map to ``map_file`` and keep the rest at display size (``side`` pixels at most)."""
        raw = result.raw if result.raw is not None else RawOutput(result.image_score, result.anomaly_map,
                                                                    result.method, result.defect_probs, result.extras)
        np.save(map_file, np.asarray(raw.anomaly_map, dtype=np.float32))
        shown = display_size(result.size, side)
        picture = image.convert("RGB")
        if picture.size != shown:
            picture = picture.resize(shown, Image.BILINEAR, reducing_gap=3.0)
        amap = np.asarray(result.anomaly_map, dtype=np.float32)
        heat = Image.fromarray(amap)  # mode "F"
        if heat.size != shown:
            heat = heat.resize(shown, Image.BOX)
        heat8 = np.round(np.clip(np.asarray(heat), 0.0, 1.0) * 255).astype(np.uint8)
        return cls(image_score=float(raw.image_score), method=raw.method, size=result.size,
                   picture=np.asarray(picture, dtype=np.uint8).copy(), heat=heat8, map_file=Path(map_file),
                   defect_probs=dict(raw.defect_probs), extras=dict(raw.extras))

    @property
    def nbytes(self) -> int:
        """Bytes this image holds in memory (the arrays; the numbers are a few hundred bytes more)."""
        return self.picture.nbytes + self.heat.nbytes + 512

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]

    def raw(self) -> RawOutput:
        """The method's raw outputs again, the map memory-mapped from disk: what ``decide`` takes."""
        amap = np.load(self.map_file, mmap_mode="r")
        return RawOutput(image_score=self.image_score, anomaly_map=amap, method=self.method,
                         defect_probs=dict(self.defect_probs), extras=dict(self.extras))

    def picture_image(self) -> Image.Image:
        return Image.fromarray(self.picture)

    def heat_map(self) -> np.ndarray:
        """The display-size map as float32 in [0, 1] (for drawing)."""
        return self.heat.astype(np.float32) / 255.0

    def display_mask(self, mask: np.ndarray) -> np.ndarray:
        """A full-resolution decided mask at display size: a display pixel is set when any pixel it covers is, so
        small defects stay visible."""
        height, width = self.heat.shape
        if mask.shape == (height, width):
            return np.asarray(mask, dtype=bool)
        full = np.asarray(mask, dtype=bool).view(np.uint8) * np.uint8(255)
        return np.asarray(Image.fromarray(full).resize((width, height), Image.BOX)) > 0
