"""Batches where the same defect repeats, for the repeated-anomaly tests and benchmark (issue 25).

Not a test module (no ``test_`` prefix): ``tests/test_repeats.py`` and ``evaluation/bench_repeats.py`` import it.
Its own renders, independent of :mod:`zsad.data.synthetic` (whose categories are the hold-out set elsewhere):

- two product kinds: ``mesh`` (a stochastic woven mesh, a texture) and ``washer`` (a ring on a plain background,
  placed with a small jitter, an object);
- a *repeated* defect: one :class:`Spot` (shape, place, size, colour) drawn identically on a given share of the
  images, as a worn tool or a misplaced fixture would;
- *one-off* defects: each image its own random spot (other place, size and colour);
- masks are exact: a pixel is in a mask when the spot changed it.

Everything is seeded: the same arguments give the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

KINDS = ("mesh", "washer")


@dataclass(frozen=True)
class Spot:
    """A planted defect: an ellipse (``elongation`` 1: a blob; larger: a scratch-like streak) at ``center`` (fractions
    of the width and height), ``radius`` (fraction of the side), ``angle`` (radians) and ``color`` (RGB in [0, 1])."""

    center: tuple[float, float]
    radius: float
    color: tuple[float, float, float]
    elongation: float = 1.0
    angle: float = 0.0


@dataclass
class Item:
    """One image of a batch: ``role`` is ``good``, ``repeat`` (carries the batch's repeated spot) or ``oneoff``."""

    image: Image.Image
    mask: np.ndarray
    role: str


@dataclass
class Batch:
    items: list[Item]
    kind: str
    spot: Spot | None = None
    meta: dict = field(default_factory=dict)

    @property
    def images(self) -> list[Image.Image]:
        return [it.image for it in self.items]

    def indices(self, role: str) -> list[int]:
        return [i for i, it in enumerate(self.items) if it.role == role]


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    out = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return out / (float(out.std()) + 1e-8)


def _mesh(rng: np.random.Generator, size: int) -> np.ndarray:
    """A woven wire mesh: two families of slightly wavy threads at a random phase, with fibre noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    pitch = size / 14.0
    wobble = _noise(rng, (size, size), size / 12) * pitch * 0.15
    a = np.cos(2 * np.pi * (xx + wobble + rng.uniform(0, pitch)) / pitch)
    b = np.cos(2 * np.pi * (yy - wobble + rng.uniform(0, pitch)) / pitch)
    threads = np.clip(0.5 + 0.5 * np.maximum(a, b), 0, 1) ** 2
    fibre = 0.06 * _noise(rng, (size, size), 0.7)
    base = np.asarray([0.55, 0.60, 0.64], np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    return base * (0.45 + 0.55 * threads + fibre)[..., None]


def _washer(rng: np.random.Generator, size: int) -> np.ndarray:
    """A flat metal ring (brushed, lit from a random side) on a dark mottled background, jittered by 2 %."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = size * (0.5 + rng.uniform(-0.02, 0.02)), size * (0.5 + rng.uniform(-0.02, 0.02))
    r = np.hypot(xx - cx, yy - cy)
    theta = np.arctan2(yy - cy, xx - cx)
    outer, inner = 0.40 * size, 0.17 * size
    ring = np.clip((outer - r) / 1.5, 0, 1) * np.clip((r - inner) / 1.5, 0, 1)
    light = rng.uniform(0, 2 * np.pi)
    metal = 0.62 + 0.12 * np.cos(theta - light) + 0.03 * _noise(rng, (size, size), 0.8)
    metal += 0.04 * np.sin(2 * np.pi * r / (size / 40))
    background = 0.18 + 0.03 * _noise(rng, (size, size), size / 10)
    lum = ring * metal + (1 - ring) * background
    return np.stack([lum * 0.98, lum, lum * 1.03], axis=-1).astype(np.float32)


def _draw(image: np.ndarray, spot: Spot) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with ``spot`` painted (soft edge), and the exact mask of the changed pixels."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - spot.center[0] * size, yy - spot.center[1] * size
    c, s = np.cos(spot.angle), np.sin(spot.angle)
    u, v = (c * dx + s * dy) / spot.elongation, -s * dx + c * dy
    rad = spot.radius * size
    alpha = np.clip((rad - np.hypot(u, v)) / 1.2 + 0.5, 0, 1)[..., None]
    color = np.asarray(spot.color, np.float32)
    out = image * (1 - alpha) + color * alpha
    return out, alpha[..., 0] > 0


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))


def random_spot(rng: np.random.Generator, kind: str) -> Spot:
    """A spot that lands on the product (on the ring for ``washer``), of a random size, shape and colour."""
    if kind == "washer":
        angle = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.23, 0.34)
        center = (0.5 + dist * np.cos(angle), 0.5 + dist * np.sin(angle))
    else:
        center = (rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85))
    color = tuple(float(v) for v in rng.choice([rng.uniform(0.0, 0.15, 3), rng.uniform(0.75, 1.0, 3),
                                                 rng.uniform(0.1, 0.9, 3)]))
    return Spot(center=center, radius=float(rng.uniform(0.03, 0.05)), color=color,
                elongation=float(rng.choice([1.0, 1.0, 3.0])), angle=float(rng.uniform(0, np.pi)))


def make_batch(n: int, repeat_fraction: float, *, kind: str = "mesh", oneoffs: int = 3, size: int = 224,
               seed: int = 0, spot: Spot | None = None, repeat_count: int | None = None) -> Batch:
    """``n`` images: ``round(repeat_fraction * n)`` (or ``repeat_count``) carry the same spot, ``oneoffs`` carry their
    own, the rest are good; roles are dealt in a seeded random order."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    repeats = int(round(repeat_fraction * n)) if repeat_count is None else repeat_count
    if repeats + oneoffs > n:
        raise ValueError(f"{repeats} repeated + {oneoffs} one-off defects do not fit in {n} images")
    spot = spot or random_spot(np.random.default_rng(seed + 10_000), kind)
    roles = ["repeat"] * repeats + ["oneoff"] * oneoffs + ["good"] * (n - repeats - oneoffs)
    roles = [roles[i] for i in rng.permutation(n)]
    render = _mesh if kind == "mesh" else _washer
    items = []
    for role in roles:
        image = render(rng, size)
        mask = np.zeros((size, size), bool)
        if role != "good":
            image, mask = _draw(image, spot if role == "repeat" else random_spot(rng, kind))
        image = image + rng.normal(0, 0.005, image.shape).astype(np.float32)
        items.append(Item(_to_pil(image), mask, role))
    return Batch(items=items, kind=kind, spot=spot if repeats else None,
                 meta={"n": n, "repeats": repeats, "oneoffs": oneoffs, "seed": seed})


def singleton_batch(batch: Batch, keep: int) -> Batch:
    """The batch without its repeated-defect images except item ``keep``: the same defect occurring ONCE."""
    items = [it for i, it in enumerate(batch.items) if it.role != "repeat" or i == keep]
    return Batch(items=items, kind=batch.kind, spot=batch.spot, meta={**batch.meta, "singleton_of": keep})
