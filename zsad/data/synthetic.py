"""Procedural inspection images with planted defects and exact ground-truth masks.

Nothing can be downloaded in tests or in the offline demo, so we render our own MVTec-like data: a few textures and
simple objects whose normal images are statistically alike, and defects whose changed pixels are known exactly
(every pixel outside a defect's mask is left bit-identical to the normal render).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from zsad.errors import UsageError

logger = logging.getLogger(__name__)

TEXTURE_CATEGORIES: tuple[str, ...] = ("weave", "grain", "carpet")
OBJECT_CATEGORIES: tuple[str, ...] = ("disc", "plate")
CATEGORIES: tuple[str, ...] = TEXTURE_CATEGORIES + OBJECT_CATEGORIES
DEFECT_TYPES: tuple[str, ...] = ("scratch", "crack", "hole", "contamination", "color", "cut", "fold")

#: Bounds on a defect mask's share of the image; defects are redrawn until they fall inside.
MIN_AREA_FRACTION: float = 0.003
MAX_AREA_FRACTION: float = 0.06

_MAX_TRIES = 30
_MIN_SIZE = 32
_DEMO_CATEGORY = "weave"
_DEMO_DEFECTS: tuple[str, ...] = ("hole", "scratch", "contamination")


@dataclass
class SyntheticSample:
    """One rendered image; ``mask`` is ``H x W`` bool, all False when ``defect_type`` is None."""

    image: Image.Image
    mask: np.ndarray
    category: str
    defect_type: str | None


@dataclass
class _Scene:
    """A normal render in float RGB, plus what defects need to know to stay on the part."""

    image: np.ndarray
    foreground: np.ndarray
    background: np.ndarray | None
    center: tuple[float, float]


@dataclass
class _Defect:
    """Where a defect goes and what it looks like there; ``target`` is only used inside ``mask``."""

    mask: np.ndarray
    target: np.ndarray
    feather: float


# --------------------------------------------------------------------------------------------------------------- utils


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple[float, ...]) -> np.ndarray:
    """Unit-variance Gaussian-blurred noise: the building block of every texture."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return noise / (float(noise.std()) + 1e-8)


def _jitter_color(rng: np.random.Generator, rgb: Sequence[float], amount: float = 0.03) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32) * rng.uniform(1 - amount, 1 + amount, 3).astype(np.float32)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


def _lighting_gain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Global brightness jitter and a gentle ramp, as different shots under the same lamp would have."""
    yy, xx = _grid(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    slope = rng.uniform(0.0, 0.06)
    ramp = ((xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)) * slope
    return (rng.uniform(0.94, 1.06) + ramp)[..., None].astype(np.float32)


def _finish(rng: np.random.Generator, scene: _Scene) -> _Scene:
    gain = _lighting_gain(rng, *scene.image.shape[:2])
    noise = rng.normal(0.0, 0.006, scene.image.shape).astype(np.float32)
    scene.image = np.clip(scene.image * gain + noise, 0.0, 1.0)
    if scene.background is not None:
        scene.background = np.clip(scene.background * gain, 0.0, 1.0)
    return scene


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8))


def _parse_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """Returns ``(height, width)``; a tuple is ``(width, height)`` as in PIL."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        width = height = int(size)
    elif isinstance(size, tuple) and len(size) == 2 and all(isinstance(v, (int, np.integer)) for v in size):
        width, height = int(size[0]), int(size[1])
    else:
        raise UsageError(f"size must be an int or a (width, height) tuple of ints, got {size!r}")
    if min(width, height) < _MIN_SIZE:
        raise UsageError(f"size must be at least {_MIN_SIZE} pixels on each side, got {width}x{height}")
    return height, width


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise UsageError(f"unknown synthetic category {category!r}; valid: {', '.join(CATEGORIES)}")


def _check_defect(defect_type: str | None) -> None:
    if defect_type is not None and defect_type not in DEFECT_TYPES:
        raise UsageError(f"unknown defect type {defect_type!r}; valid: {', '.join(DEFECT_TYPES)}")


# ------------------------------------------------------------------------------------------------------------ textures


def _texture_scene(image: np.ndarray) -> _Scene:
    h, w = image.shape[:2]
    return _Scene(image=image, foreground=np.ones((h, w), bool), background=None, center=(w / 2, h / 2))


def _render_weave(rng: np.random.Generator, h: int, w: int) -> _Scene:
    """Plain-weave fabric: warp and weft threads alternating over and under on a fixed pitch."""
    period = min(h, w) / 16.0
    yy, xx = _grid(h, w)
    u = (xx + rng.uniform(0, 2 * period)) / period
    v = (yy + rng.uniform(0, 2 * period)) / period
    fu, fv = u - np.floor(u), v - np.floor(v)
    warp_on_top = ((np.floor(u) + np.floor(v)) % 2) == 0
    warp = np.sin(np.pi * fu) ** 0.6 * (0.7 + 0.3 * np.sin(np.pi * fv))
    weft = np.sin(np.pi * fv) ** 0.6 * (0.7 + 0.3 * np.sin(np.pi * fu))
    shade = np.where(warp_on_top, warp, weft) + 0.05 * _smooth_noise(rng, (h, w), 0.8)
    color = np.where(
        warp_on_top[..., None], _jitter_color(rng, (0.80, 0.74, 0.62)), _jitter_color(rng, (0.72, 0.69, 0.60))
    )
    return _texture_scene(color * (0.30 + 0.70 * shade)[..., None])


def _render_grain(rng: np.random.Generator, h: int, w: int) -> _Scene:
    """Wood: warped growth rings across the board with fine streaks along it."""
    s = min(h, w)
    period = s / 10.0
    yy, _ = _grid(h, w)
    warp = _smooth_noise(rng, (h, w), (s / 10, s / 3)) * s * 0.04
    warp += _smooth_noise(rng, (h, w), (s / 30, s / 8)) * s * 0.006
    rings = (0.5 + 0.5 * np.sin(2 * np.pi * (yy + warp + rng.uniform(0, period)) / period)) ** 4
    streaks = _smooth_noise(rng, (h, w), (0.6, s / 20)) * 0.04
    light, dark = _jitter_color(rng, (0.78, 0.58, 0.38)), _jitter_color(rng, (0.52, 0.33, 0.19))
    image = light + (dark - light) * (0.85 * rings)[..., None]
    return _texture_scene(image * (1.0 + streaks)[..., None])


def _render_carpet(rng: np.random.Generator, h: int, w: int) -> _Scene:
    """Carpet: fine stochastic tufts with a slight colour mottling."""
    lum = 1.0 + 0.10 * _smooth_noise(rng, (h, w), 0.9) + 0.07 * _smooth_noise(rng, (h, w), 2.5)
    mottle = 0.02 * _smooth_noise(rng, (h, w, 3), (4.0, 4.0, 0.0))
    return _texture_scene(_jitter_color(rng, (0.42, 0.45, 0.55)) * lum[..., None] + mottle)


# ------------------------------------------------------------------------------------------------------------- objects


def _plain_background(rng: np.random.Generator, h: int, w: int, rgb: Sequence[float]) -> np.ndarray:
    variation = 1.0 + 0.04 * _smooth_noise(rng, (h, w), min(h, w) / 8)
    return _jitter_color(rng, rgb) * variation[..., None]


def _render_disc(rng: np.random.Generator, h: int, w: int) -> _Scene:
    """A turned metal disc with a groove, bevel and centre bore, on a dark plain background."""
    s = min(h, w)
    yy, xx = _grid(h, w)
    cx, cy = w / 2 + rng.uniform(-0.02, 0.02) * s, h / 2 + rng.uniform(-0.02, 0.02) * s
    radius, bore = 0.36 * s * rng.uniform(0.99, 1.01), 0.09 * s
    r, theta = np.hypot(xx - cx, yy - cy), np.arctan2(yy - cy, xx - cx)
    light = rng.uniform(0, 2 * np.pi)
    background = _plain_background(rng, h, w, (0.20, 0.22, 0.25))
    background *= (1.0 - 0.35 * np.exp(-np.maximum(r - radius, 0) / (0.03 * s)))[..., None]
    lum = 0.60 + 0.10 * np.cos(theta - light) * (r / radius) + 0.02 * np.sin(2 * np.pi * r / (s / 90))
    lum -= 0.25 * np.exp(-(((r - 0.62 * radius) / (0.012 * s)) ** 2))
    bevel = np.clip((r - 0.93 * radius) / (0.07 * radius), 0, 1)
    lum += bevel * (0.14 * np.cos(theta - light) - 0.05) - 0.2 * np.clip(1.3 - r / bore, 0, 1)
    metal = _jitter_color(rng, (0.62, 0.63, 0.66)) / 0.62 * lum[..., None]
    coverage = (np.clip(radius - r + 0.5, 0, 1) * np.clip(r - bore + 0.5, 0, 1))[..., None]
    image = coverage * metal + (1 - coverage) * background
    return _Scene(image=image, foreground=coverage[..., 0] > 0.5, background=background, center=(cx, cy))


def _render_plate(rng: np.random.Generator, h: int, w: int) -> _Scene:
    """A brushed rectangular plate with four screws and a through-hole, on a dark mat."""
    s = min(h, w)
    yy, xx = _grid(h, w)
    cx, cy = w / 2 + rng.uniform(-0.02, 0.02) * s, h / 2 + rng.uniform(-0.02, 0.02) * s
    half_w, half_h, corner = 0.36 * s, 0.25 * s, 0.03 * s
    qx, qy = np.abs(xx - cx) - (half_w - corner), np.abs(yy - cy) - (half_h - corner)
    signed = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - corner
    background = _plain_background(rng, h, w, (0.16, 0.20, 0.18))
    background *= (1.0 - 0.3 * np.exp(-np.maximum(signed, 0) / (0.025 * s)))[..., None]
    lum = 0.66 + 0.035 * _smooth_noise(rng, (h, w), (0.5, s / 15)) + 0.06 * (xx - cx) / (2 * half_w)
    edge = np.clip(1 + signed / (0.02 * s), 0, 1)
    lum -= 0.12 * edge * (yy - cy) / half_h
    screw_r = 0.032 * s
    for sx in (-1, 1):
        for sy in (-1, 1):
            px, py = cx + sx * (half_w - 0.07 * s), cy + sy * (half_h - 0.07 * s)
            d = np.hypot(xx - px, yy - py) / screw_r
            angle = rng.uniform(0, np.pi)
            slot = np.abs((xx - px) * np.sin(angle) - (yy - py) * np.cos(angle)) < 0.18 * screw_r
            head = 0.45 + 0.3 * (1 - d**2) - 0.3 * slot - 0.25 * np.exp(-(((d - 1) / 0.12) ** 2))
            lum = np.where(d < 1.15, np.where(d < 1, head, lum - 0.25), lum)
    hole_r = 0.06 * s
    rh = np.hypot(xx - cx, yy - cy)
    lum -= 0.2 * np.clip(1.35 - rh / hole_r, 0, 1)
    metal = _jitter_color(rng, (0.70, 0.71, 0.73)) / 0.66 * lum[..., None]
    coverage = (np.clip(0.5 - signed, 0, 1) * np.clip(rh - hole_r + 0.5, 0, 1))[..., None]
    image = coverage * metal + (1 - coverage) * background
    return _Scene(image=image, foreground=coverage[..., 0] > 0.5, background=background, center=(cx, cy))


_RENDERERS: dict[str, Callable[[np.random.Generator, int, int], _Scene]] = {
    "weave": _render_weave,
    "grain": _render_grain,
    "carpet": _render_carpet,
    "disc": _render_disc,
    "plate": _render_plate,
}


# ------------------------------------------------------------------------------------------------------ defect shapes


def _draw(shape: tuple[int, int], paint: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    """Rasterises PIL drawing calls into a bool mask."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    paint(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _polyline(shape: tuple[int, int], points: np.ndarray, width: int) -> np.ndarray:
    pts = [(float(x), float(y)) for x, y in points]
    return _draw(shape, lambda d: d.line(pts, fill=255, width=width, joint="curve"))


def _blob(rng: np.random.Generator, shape: tuple[int, int], center: tuple[float, float], radius: float,
          roughness: float) -> np.ndarray:
    """An irregular round region: a circle whose radius wobbles with a few random harmonics."""
    yy, xx = _grid(*shape)
    dx, dy = xx - center[0], yy - center[1]
    theta = np.arctan2(dy, dx)
    wobble = np.ones_like(theta)
    for k in range(2, 7):
        wobble += rng.uniform(0, roughness / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(dx, dy) <= radius * wobble


def _contrast_tone(base: np.ndarray, mask: np.ndarray) -> float:
    """A grey level that stands out from what the mask covers: light on dark parts, dark on light ones."""
    return 0.92 if float(_luminance(base[mask]).mean()) < 0.55 else 0.1


def _scratch(rng: np.random.Generator, scene: _Scene, center: tuple[float, float]) -> _Defect:
    h, w = scene.image.shape[:2]
    s = min(h, w)
    length, width = rng.uniform(0.25, 0.4) * s, max(2, round(rng.uniform(0.014, 0.02) * s))
    angle = rng.uniform(0, np.pi)
    along, normal = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    c = np.asarray(center)
    p0, p2 = c - along * length / 2, c + along * length / 2
    p1 = c + normal * rng.uniform(-0.3, 0.3) * length
    t = np.linspace(0, 1, 24)[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    points += c - points.mean(axis=0)
    mask = _polyline((h, w), points, width)
    tone = _contrast_tone(scene.image, mask)
    target = 0.25 * scene.image + 0.75 * tone + 0.03 * rng.standard_normal((h, w, 1)).astype(np.float32)
    return _Defect(mask=mask, target=target, feather=0.7)


def _crack(rng: np.random.Generator, scene: _Scene, center: tuple[float, float]) -> _Defect:
    h, w = scene.image.shape[:2]
    s = min(h, w)
    step, width = 0.025 * s, max(2, round(0.011 * s))

    def walk(start: np.ndarray, heading: float, n: int) -> np.ndarray:
        points = [start]
        for _ in range(n):
            heading += rng.normal(0, 0.5)
            points.append(points[-1] + rng.uniform(0.6, 1.4) * step * np.array([np.cos(heading), np.sin(heading)]))
        return np.asarray(points)

    main = walk(np.zeros(2), rng.uniform(0, 2 * np.pi), int(rng.uniform(0.3, 0.45) * s / step))
    offset = np.asarray(center) - main.mean(axis=0)
    mask = _polyline((h, w), main + offset, width)
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(1, len(main) - 1))
        d = main[k + 1] - main[k]
        heading = np.arctan2(d[1], d[0]) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        branch = walk(main[k], heading, max(2, len(main) // 3))
        mask |= _polyline((h, w), branch + offset, max(1, width - 1))
    target = 0.05 + 0.1 * scene.image + 0.02 * rng.standard_normal((h, w, 1)).astype(np.float32)
    return _Defect(mask=mask, target=target, feather=0.5)


def _hole(rng: np.random.Generator, scene: _Scene, center: tuple[float, float]) -> _Defect:
    h, w = scene.image.shape[:2]
    mask = _blob(rng, (h, w), center, rng.uniform(0.035, 0.075) * min(h, w), 0.5)
    target = 0.06 + 0.05 * scene.image + 0.03 * _smooth_noise(rng, (h, w), 1.5)[..., None]
    return _Defect(mask=mask, target=target, feather=1.0)


_STAIN_COLORS = np.asarray(
    [(0.55, 0.25, 0.08), (0.14, 0.11, 0.05), (0.25, 0.55, 0.20), (0.15, 0.25, 0.65), (0.88, 0.80, 0.25)],
    dtype=np.float32,
)


def _contamination(rng: np.random.Generator, scene: _Scene, center: tuple[float, float]) -> _Defect:
    h, w = scene.image.shape[:2]
    mask = _blob(rng, (h, w), center, rng.uniform(0.045, 0.09) * min(h, w), 0.8)
    mean = scene.image[mask].mean(axis=0) if mask.any() else scene.image.reshape(-1, 3).mean(axis=0)
    farthest = np.argsort(-np.linalg.norm(_STAIN_COLORS - mean, axis=1))[:3]
    color = _STAIN_COLORS[int(rng.choice(farthest))]
    alpha = np.clip(0.8 + 0.12 * _smooth_noise(rng, (h, w), 2.0), 0.55, 0.97)[..., None]
    texture = 1.0 + 0.08 * _smooth_noise(rng, (h, w), 1.0)[..., None]
    return _Defect(mask=mask, target=scene.image * (1 - alpha) + color * texture * alpha, feather=1.2)


def _color(rng: np.random.Generator, scene: _Scene, center: tuple[float, float]) -> _Defect:
    h, w = scene.image.shape[:2]
    mask = _blob(rng, (h, w), center, rng.uniform(0.07, 0.11) * min(h, w), 0.3)
    direction = rng.standard_normal(3)
    tint = 1.0 + 0.35 * direction / (np.linalg.norm(direction) + 1e-8)
    bright = float(_luminance(scene.image[mask]).mean()) > 0.55 if mask.any() else True
    gain = rng.uniform(0.6, 0.75) if bright else rng.uniform(1.3, 1.5)
    return _Defect(mask=mask, target=np.clip(scene.image * (tint * gain).astype(np.float32), 0, 1), feather=2.0)


def _edge_point(scene: _Scene, center: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The last foreground pixel on the ray from the object's centre through ``center``, and that ray's direction."""
    h, w = scene.foreground.shape
    origin, c = np.asarray(scene.center), np.asarray(center, dtype=float)
    direction = c - origin
    norm = float(np.linalg.norm(direction))
    direction = direction / norm if norm >= 1.0 else np.array([1.0, 0.0])
    point = c.copy()
    while True:
        nxt = point + 0.5 * direction
        x, y = round(float(nxt[0])), round(float(nxt[1]))
        if not (0 <= x < w and 0 <= y < h and scene.foreground[y, x]):
            return point, direction
        point = nxt


def _cut(rng: np.random.Generator, scene: _Scene, center: tuple[float, float]) -> _Defect:
    h, w = scene.image.shape[:2]
    s = min(h, w)
    noise = 0.02 * rng.standard_normal((h, w, 1)).astype(np.float32)
    if scene.background is not None:
        edge, out = _edge_point(scene, center)
        tangent = np.array([-out[1], out[0]])
        half, depth = rng.uniform(0.06, 0.1) * s, rng.uniform(0.08, 0.13) * s
        skew = rng.uniform(-0.3, 0.3) * half
        base = edge + out * 0.05 * s
        corners = [base + tangent * half, base - tangent * half, edge - out * depth + tangent * skew]
        mask = _draw((h, w), lambda d: d.polygon([(float(x), float(y)) for x, y in corners], fill=255))
        return _Defect(mask=mask, target=scene.background + noise, feather=0.0)
    length, width = rng.uniform(0.2, 0.3) * s, rng.uniform(0.025, 0.04) * s
    angle = rng.uniform(0, np.pi)
    along, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    c = np.asarray(center)
    steps = np.linspace(-0.5, 0.5, 9)
    left = [c + along * t * length + across * (width / 2) * rng.uniform(0.7, 1.3) for t in steps]
    right = [c + along * t * length - across * (width / 2) * rng.uniform(0.7, 1.3) for t in steps[::-1]]
    outline = [(float(x), float(y)) for x, y in left + right]
    mask = _draw((h, w), lambda d: d.polygon(outline, fill=255))
    return _Defect(mask=mask, target=0.07 + 0.05 * scene.image + noise, feather=0.4)


def _fold(rng: np.random.Generator, scene: _Scene, center: tuple[float, float]) -> _Defect:
    h, w = scene.image.shape[:2]
    s = min(h, w)
    length, width = rng.uniform(0.3, 0.45) * s, rng.uniform(0.06, 0.1) * s
    angle = rng.uniform(0, np.pi)
    yy, xx = _grid(h, w)
    dx, dy = xx - center[0], yy - center[1]
    along, across = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
    half = (width / 2) * np.sqrt(np.clip(1 - (2 * along / length) ** 2, 0, 1))
    mask = (np.abs(across) <= half) & (half > 0.5)
    t = np.clip(across / np.maximum(half, 1e-3), -1, 1)
    strength = rng.uniform(0.35, 0.5)
    shading = 1.0 + strength * (0.8 * t - 0.5 * (1 - t**2))
    return _Defect(mask=mask, target=np.clip(scene.image * shading[..., None], 0, 1), feather=1.0)


_DEFECTS: dict[str, Callable[[np.random.Generator, _Scene, tuple[float, float]], _Defect]] = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "contamination": _contamination,
    "color": _color,
    "cut": _cut,
    "fold": _fold,
}


# -------------------------------------------------------------------------------------------------------- placement


def _interior(scene: _Scene) -> np.ndarray:
    """Foreground pixels far enough from the part's edge that a defect centred there stays on the part."""
    s = min(scene.foreground.shape)
    if scene.background is None:
        h, w = scene.foreground.shape
        margin = int(0.06 * s)
        inner = np.zeros((h, w), bool)
        inner[margin:h - margin, margin:w - margin] = True
        return inner
    inner = ndimage.distance_transform_edt(scene.foreground) >= 0.06 * s
    return inner if inner.any() else scene.foreground


def _defect_center(rng: np.random.Generator, interior: np.ndarray,
                   location: tuple[float, float] | None) -> tuple[float, float]:
    h, w = interior.shape
    ys, xs = np.nonzero(interior)
    if location is None:
        k = int(rng.integers(len(xs)))
        return float(xs[k]) + rng.uniform(-0.5, 0.5), float(ys[k]) + rng.uniform(-0.5, 0.5)
    x, y = float(location[0]) * (w - 1), float(location[1]) * (h - 1)
    if interior[round(y), round(x)]:
        return x, y
    k = int(np.argmin((xs - x) ** 2 + (ys - y) ** 2))
    return float(xs[k]), float(ys[k])


def _plant(rng: np.random.Generator, scene: _Scene, defect_type: str,
           location: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """Draws defects until one has a plausible area on the part; returns the new image and its mask."""
    interior = _interior(scene)
    for attempt in range(_MAX_TRIES):
        defect = _DEFECTS[defect_type](rng, scene, _defect_center(rng, interior, location))
        mask = defect.mask & scene.foreground
        if MIN_AREA_FRACTION <= mask.mean() <= MAX_AREA_FRACTION:
            break
        logger.debug("redrawing %s (attempt %d): area fraction %.4f", defect_type, attempt, mask.mean())
    alpha = mask.astype(np.float32)
    if defect.feather > 0:
        alpha = np.clip(0.3 + ndimage.gaussian_filter(alpha, defect.feather), 0, 1) * alpha
    alpha = alpha[..., None]
    blended = (scene.image * (1 - alpha) + np.clip(defect.target, 0, 1) * alpha).astype(scene.image.dtype)
    return np.where(mask[..., None], blended, scene.image), mask


# ------------------------------------------------------------------------------------------------------- public API


def make_sample(category: str, defect_type: str | None, *, size: int | tuple[int, int] = 256,
                rng: np.random.Generator, location: tuple[float, float] | None = None) -> SyntheticSample:
    """Renders one normal image of ``category`` and plants ``defect_type`` in it (none when None).

    ``size`` is an int or ``(width, height)``. ``location`` is the defect centre as ``(x, y)`` fractions of the image;
    on objects it moves to the nearest point well inside the part, and a ``cut`` goes to the part's edge along the
    ray from the part's centre through it. The normal render consumes ``rng`` first, so the same generator state with
    ``defect_type=None`` gives the identical image without the defect.
    """
    _check_category(category)
    _check_defect(defect_type)
    h, w = _parse_size(size)
    if location is not None and (len(location) != 2 or not all(0.0 <= float(v) <= 1.0 for v in location)):
        raise UsageError(f"location must be (x, y) fractions in [0, 1], got {location!r}")
    scene = _finish(rng, _RENDERERS[category](rng, h, w))
    if defect_type is None:
        return SyntheticSample(_to_pil(scene.image), np.zeros((h, w), bool), category, None)
    image, mask = _plant(rng, scene, defect_type, location)
    return SyntheticSample(_to_pil(image), mask, category, defect_type)


def _save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False)


def make_dataset(root: Path, *, categories: Sequence[str] | None = None, n_train_good: int = 5,
                 n_test_good: int = 5, n_test_defect: int = 5, defect_types: Sequence[str] | None = None,
                 size: int = 256, seed: int = 0) -> list[Path]:
    """Writes an MVTec-AD-style folder tree of synthetic images and returns the category folders.

    Defective test images cycle through ``defect_types``; each category draws from its own seeded generator, so its
    bytes do not depend on which other categories are written.
    """
    categories = list(CATEGORIES if categories is None else categories)
    defect_types = list(DEFECT_TYPES if defect_types is None else defect_types)
    for category in categories:
        _check_category(category)
    for defect in defect_types:
        _check_defect(defect)
    if min(n_train_good, n_test_good, n_test_defect) < 0:
        raise UsageError("image counts must not be negative")
    if n_test_defect and not defect_types:
        raise UsageError(f"defect_types is empty but n_test_defect={n_test_defect}; valid: {', '.join(DEFECT_TYPES)}")
    _parse_size(size)
    root = Path(root)
    folders = []
    for category in categories:
        rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
        folder = root / category
        for split, count in (("train", n_train_good), ("test", n_test_good)):
            for i in range(count):
                _save_png(make_sample(category, None, size=size, rng=rng).image, folder / split / "good" / f"{i:03d}.png")
        counters: dict[str, int] = {}
        for i in range(n_test_defect):
            defect = defect_types[i % len(defect_types)]
            k = counters[defect] = counters.get(defect, -1) + 1
            sample = make_sample(category, defect, size=size, rng=rng)
            _save_png(sample.image, folder / "test" / defect / f"{k:03d}.png")
            mask = Image.fromarray(sample.mask.astype(np.uint8) * 255)
            _save_png(mask, folder / "ground_truth" / defect / f"{k:03d}_mask.png")
        logger.info("wrote synthetic category %s to %s", category, folder)
        folders.append(folder)
    return folders


def write_demo_samples(folder: Path, seed: int = 0) -> list[Path]:
    """Regenerates the committed demo images: five good weave images and three with different defects."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    jobs: list[tuple[str | None, int]] = [(None, i) for i in range(5)] + [(d, 0) for d in _DEMO_DEFECTS]
    paths = []
    for defect, index in jobs:
        sample = make_sample(_DEMO_CATEGORY, defect, size=256, rng=rng)
        path = folder / f"{_DEMO_CATEGORY}_{defect or 'good'}_{index}.png"
        _save_png(sample.image, path)
        paths.append(path)
    return paths
