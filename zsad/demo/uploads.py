"""A scoring request's inputs: uploads and picked samples under safe names, within the count and size limits, and
each image's pixel count from its header (for the memory reservation, before anything is decoded)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image

from zsad.data.images import load_image
from zsad.demo.names import safe_name, unique_names
from zsad.errors import ImageError, UsageError
from zsad.resources import data_dir

SAMPLES_MARKER = "samples/README.md"  # how zsad.resources finds the bundled demo folder


def bundled_samples() -> dict[str, Path]:
    """The bundled sample images by name (``demo/samples``, shipped as ``zsad/_data/demo/samples``)."""
    try:
        folder = data_dir("demo", SAMPLES_MARKER) / "samples"
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    return {p.name: p for p in sorted(folder.glob("*.png"))}


def gather(files: Sequence[str] | None, picked: Sequence[str] | None, samples: Mapping[str, Path],
           max_files: int) -> list[tuple[str, Path]]:
    """(display name, path) of the uploads and the picked samples, with the count limit applied; display names are
    safe and distinct."""
    uploads = [Path(f) for f in (files or [])]
    picked = list(picked or [])
    unknown = [s for s in picked if s not in samples]
    if unknown:
        raise UsageError(f"unknown sample(s) {', '.join(safe_name(s) for s in unknown)}")
    count = len(uploads) + len(picked)
    if count == 0:
        raise UsageError("no images: upload images or pick some samples")
    if count > max_files:
        raise UsageError(f"too many images: {count} given, at most {max_files} per run")
    names = unique_names([p.name for p in uploads] + picked)
    return list(zip(names, uploads + [samples[s] for s in picked]))


def probe(path: Path, max_file_mb: int, max_pixels: int) -> tuple[int, str | None]:
    """Pixels of the image from its header (nothing decoded), or 0 and why it cannot be scored. Only the size is
    read here; a file that is unreadable or too large gets its reason from :func:`zsad.data.images.load_image`
    (which stops at the header for those)."""
    try:
        size = path.stat().st_size
    except OSError:
        return 0, "the uploaded file is gone"
    if size > max_file_mb * 1024 * 1024:
        return 0, f"file is {size / 2**20:.1f} MB, over the limit of {max_file_mb} MB"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
        if 0 < width * height <= max_pixels:
            return width * height, None
    except Exception:  # zsad's loader below says why, in one line
        pass
    try:
        image = load_image(path, max_pixels=max_pixels)
    except ImageError as exc:
        return 0, exc.problem  # the problem alone: the temporary upload path means nothing to a visitor
    return image.width * image.height, None
