"""Robust image loading and input discovery.

Every input image passes through :func:`load_image`, so the rest of the toolkit
can assume an 8-bit RGB image whatever the file held, and every failure the user
can cause becomes one :class:`~zsad.errors.ImageError` line instead of a PIL
traceback. :func:`discover_images` turns command-line inputs (files, folders,
globs) into a stable, de-duplicated list with safe relative names for outputs.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from zsad.errors import ImageError, UsageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

DEFAULT_MAX_PIXELS: int = 10_000 * 10_000

_GLOB_CHARS = re.compile(r"[*?\[]")
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_REASON_MAX_CHARS = 120


# --------------------------------------------------------------------------- loading


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load ``path`` as a fully decoded 8-bit RGB image with its EXIF orientation applied.

    The file is closed on return. The pixel count is checked from the header before
    any pixel is decoded, so a decompression bomb costs nothing. Every problem with
    the file raises :class:`ImageError` with a one-line reason.
    """
    if max_pixels <= 0:
        raise UsageError(f"max_pixels must be a positive number of pixels, got {max_pixels}")
    file = Path(path)
    _check_file(file)
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces PIL's soft warning; ignoring it only
            # here keeps the caller's warning filters and PIL's global limit untouched.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                _check_size(file, image.size, max_pixels)
                image.load()
                rgb = _to_rgb(ImageOps.exif_transpose(image))
                if rgb is image:  # never hand back the object tied to the open file
                    rgb = rgb.copy()
                return rgb
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(file, _bomb_problem(str(exc), max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageError(file, "not an image file (format not recognised)") from None
    except PermissionError:
        raise ImageError(file, "cannot read file (permission denied)") from None
    except MemoryError:
        raise ImageError(file, "not enough memory to decode the image") from None
    except Exception as exc:  # decoders of untrusted bytes raise many unrelated types
        logger.debug("decoding %s failed", file, exc_info=True)
        raise ImageError(file, f"truncated or corrupt image data: {_short_reason(exc)}") from None


def _check_file(file: Path) -> None:
    """Reject paths that are not a readable, non-empty regular file, before PIL sees them."""
    try:
        if file.is_dir():
            raise ImageError(file, "is a directory, not an image file")
        if not file.exists():
            raise ImageError(file, "file does not exist")
        if not file.is_file():
            raise ImageError(file, "not a regular file")
        if file.stat().st_size == 0:
            raise ImageError(file, "empty file (0 bytes)")
    except OSError as exc:
        raise ImageError(file, f"cannot access file: {_short_reason(exc)}") from None


def _check_size(file: Path, size: tuple[int, int], max_pixels: int) -> None:
    """Refuse an image whose header claims more pixels than allowed (decompression bomb)."""
    width, height = size
    pixels = width * height
    if pixels > max_pixels:
        raise ImageError(
            file,
            f"image is {width} x {height} = {pixels} pixels, "
            f"over the limit of {max_pixels} pixels (decompression-bomb guard)",
        )
    if width <= 0 or height <= 0:
        raise ImageError(file, f"truncated or corrupt image data: header gives size {width} x {height}")


def _bomb_problem(message: str, max_pixels: int) -> str:
    """Phrase PIL's own hard decompression-bomb refusal like our header check does."""
    pixels_match = re.search(r"\((\d+) pixels\)", message)
    limit_match = re.search(r"limit of (\d+)", message)
    if pixels_match is None:
        return "image is too large to decode safely (decompression-bomb guard)"
    pixels = int(pixels_match.group(1))
    if pixels > max_pixels or limit_match is None:
        return f"image is {pixels} pixels, over the limit of {max_pixels} pixels (decompression-bomb guard)"
    return (
        f"image is {pixels} pixels, over Pillow's hard limit of {limit_match.group(1)} pixels "
        "(decompression-bomb guard)"
    )


def _short_reason(exc: BaseException) -> str:
    """First line of an exception message, bounded, so an error stays on one line."""
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
    if not text:
        return type(exc).__name__
    return text if len(text) <= _REASON_MAX_CHARS else text[: _REASON_MAX_CHARS - 3] + "..."


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Transparent pixels are composited onto black: their stored colour is often
    undefined (left-over or zero), and a fixed black background makes the result
    deterministic and matches the dark backgrounds of masked-object inspection
    images instead of inventing a bright border the model could score as anomalous.
    """
    if image.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(image)
    if image.mode in _ALPHA_MODES or (image.mode in {"P", "L", "RGB"} and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """Stretch 16-bit, 32-bit integer or float pixels over 0..255 instead of clipping.

    PIL's own conversion clips everything above 255, which turns most 16-bit
    images white; here the range the data actually uses is mapped linearly, so
    12-bit camera data stored in 16 bits stays visible and ordering is kept.
    """
    values = np.asarray(image).astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        gray = np.zeros(values.shape, dtype=np.uint8)
    else:
        low = float(values[finite].min())
        high = float(values[finite].max())
        if high > low:
            scaled = (values - low) * (255.0 / (high - low))
        else:  # constant image: keep its brightness on the format's natural scale
            natural = 65535.0 if image.mode.startswith("I;16") else (1.0 if image.mode == "F" else 255.0)
            scaled = np.full(values.shape, np.clip(low / natural, 0.0, 1.0) * 255.0)
        scaled = np.where(finite, scaled, 0.0)
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class InputImage:
    """One image to process; ``relative`` names its outputs (never absolute, never ``..``)."""

    path: Path
    relative: PurePosixPath


def discover_images(inputs: Sequence[str | Path]) -> list[InputImage]:
    """Expand files, folders and glob patterns into a de-duplicated, ordered image list.

    Order is deterministic: inputs as given, files sorted within each input. A file
    reached twice (same resolved path) keeps its first occurrence.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise UsageError("no inputs given: pass at least one image file, folder or glob pattern")
    found: list[InputImage] = []
    seen: set[Path] = set()
    for raw in inputs:
        for item in _expand_input(raw):
            key = _resolved(item.path)
            if key in seen:
                continue
            seen.add(key)
            found.append(item)
    logger.debug("discovered %d image(s) from %d input(s)", len(found), len(inputs))
    return found


def _expand_input(raw: str | Path) -> list[InputImage]:
    """Images named by one input: a file, a folder (recursive) or a glob pattern."""
    text = os.fspath(raw)
    if not text.strip():
        raise UsageError("an input path is empty")
    path = Path(text).expanduser()
    if path.is_dir():
        images = _sorted(_walk_folder(path, path))
        if not images:
            raise UsageError(f"no images found in {path} (looked for {_extension_list()})")
        return images
    if path.is_file():
        return [InputImage(path=path, relative=PurePosixPath(path.name))]
    if path.exists():
        raise UsageError(f"input is not a file or folder: {path}")
    if _GLOB_CHARS.search(text):
        return _expand_glob(os.path.expanduser(text))
    raise UsageError(f"input path does not exist: {path}")


def _expand_glob(pattern: str) -> list[InputImage]:
    """Glob matches (recursive ``**``); matched folders are searched like folder inputs."""
    base = _glob_base(pattern)
    matches = sorted(glob.glob(pattern, recursive=True))
    if not matches:
        raise UsageError(f"glob pattern {pattern} matched nothing")
    images: list[InputImage] = []
    for match in matches:
        path = Path(match)
        if path.is_dir():
            images.extend(_walk_folder(path, base))
        elif path.is_file() and _is_image_name(path.name):
            images.append(InputImage(path=path, relative=_safe_relative(path, base)))
    if not images:
        raise UsageError(f"glob pattern {pattern} matched no image files (looked for {_extension_list()})")
    return _sorted(images)


def _glob_base(pattern: str) -> Path:
    """Longest leading directory of ``pattern`` without wildcards: outputs are named relative to it."""
    parts = Path(pattern).parts
    literal: list[str] = []
    for part in parts[:-1]:
        if _GLOB_CHARS.search(part):
            break
        literal.append(part)
    return Path(*literal) if literal else Path(".")


def _walk_folder(folder: Path, base: Path) -> list[InputImage]:
    """Image files under ``folder``, recursively, skipping hidden files and folders."""
    images: list[InputImage] = []
    # Symlinked sub-folders are not followed, so a link loop cannot hang discovery.
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not _is_image_name(name):
                continue
            path = Path(root) / name
            if path.is_file():
                images.append(InputImage(path=path, relative=_safe_relative(path, base)))
    return images


def _safe_relative(path: Path, base: Path) -> PurePosixPath:
    """``path`` relative to ``base`` as a POSIX path; falls back to the file name if not under it."""
    try:
        rel = Path(os.path.normpath(os.path.abspath(path))).relative_to(os.path.normpath(os.path.abspath(base)))
    except ValueError:
        return PurePosixPath(path.name)
    parts = [p for p in rel.parts if p not in ("", ".")]
    if not parts or ".." in parts:
        return PurePosixPath(path.name)
    return PurePosixPath(*parts)


def _sorted(images: Iterable[InputImage]) -> list[InputImage]:
    """Deterministic order: by relative path components, then full path."""
    return sorted(images, key=lambda item: (item.relative.parts, str(item.path)))


def _resolved(path: Path) -> Path:
    """Identity of a file for de-duplication, tolerant of unresolvable paths."""
    try:
        return path.resolve()
    except OSError:
        return Path(os.path.abspath(path))


def _is_image_name(name: str) -> bool:
    """Whether ``name`` has one of :data:`IMAGE_EXTENSIONS`, ignoring case."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _extension_list() -> str:
    return ", ".join(IMAGE_EXTENSIONS)
