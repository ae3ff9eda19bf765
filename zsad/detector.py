"""The Python entry point: ``create(...)`` builds a :class:`Detector`; ``Detector.score`` scores images."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

from zsad.backbones import DEFAULT_BACKBONE, ClipBackbone, load_backbone
from zsad.data.images import load_image
from zsad.errors import BatchTooSmallError, UsageError
from zsad.methods import method_class
from zsad.methods.base import Method
from zsad.runtime import resolve_device, resolve_precision
from zsad.scoring.postprocess import DEFAULT_THRESHOLD
from zsad.types import AnomalyResult

log = logging.getLogger(__name__)

ImageLike = str | Path | Image.Image


class Detector:
    """A method bound to a backbone, a device and a precision; scores PIL images or image files."""

    def __init__(self, method: Method, *, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        self.method = method
        self.batch_size = batch_size

    @property
    def backbone(self):
        return self.method.backbone

    @property
    def name(self) -> str:
        return self.method.name

    def setup(self, class_name: str | None = None) -> None:
        self.method.setup(class_name)

    def score(self, images: Iterable[ImageLike], *, class_name: str | None = None) -> list[AnomalyResult]:
        """Score images (PIL or paths). A bad file raises :class:`ImageError` naming it."""
        pil, paths = [], []
        for item in images:
            if isinstance(item, Image.Image):
                pil.append(item.convert("RGB"))
                paths.append(None)
            else:
                pil.append(load_image(item))
                paths.append(str(item))
        if class_name is not None:
            self.setup(class_name)
        return self.score_images(pil, paths)

    def score_images(self, images: Sequence[Image.Image], paths: Sequence[str | None]) -> list[AnomalyResult]:
        """Score already-loaded RGB images; transductive methods see all of them at once."""
        if not images:
            return []
        if self.method.transductive:
            chunks = [self.extract_chunk(images[s:s + self.batch_size]) for s in range(0, len(images), self.batch_size)]
            return list(self.joint_results(chunks, [img.size for img in images], paths))
        results: list[AnomalyResult] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            tensor = self.backbone.preprocess(chunk)
            results.extend(self.method.score_tensors(tensor, [img.size for img in chunk],
                                                     list(paths[start:start + self.batch_size])))
        return results

    # Transductive methods: callers that must not keep every decoded image (the CLI, evaluation) extract features
    # chunk by chunk, drop the images, and score the batch jointly at the end.
    def extract_chunk(self, images: Sequence[Image.Image]):
        """Features of a transductive method for one chunk of images."""
        return self.method.extract(self.backbone.preprocess(images))

    def joint_results(self, chunks: Sequence, sizes: Sequence[tuple[int, int]],
                      paths: Sequence[str | None]) -> Iterator[AnomalyResult]:
        """Score the images of all ``chunks`` jointly; results come one at a time, in order."""
        if len(sizes) < self.method.min_batch:
            raise BatchTooSmallError(
                f"method '{self.name}' scores images against each other and needs at least "
                f"{self.method.min_batch} images of one category, got {len(sizes)}; use --method clip for fewer images"
            )
        return self.method.results(self.method.combine(chunks), sizes, list(paths))


def create(
    method: str = "clip",
    *,
    backbone: str | ClipBackbone = DEFAULT_BACKBONE,
    device: str | torch.device = "auto",
    precision: str = "auto",
    image_size: int = 518,
    batch_size: int = 8,
    threshold: float = DEFAULT_THRESHOLD,
    class_name: str | None = None,
    cache_dir: str | None = None,
    warn_random: bool = True,
    **method_options,
) -> Detector:
    """Build a detector. ``method_options`` are fields of the method's config dataclass (e.g. ``prompts=``).

    ``backbone`` is a name, or an already loaded :class:`ClipBackbone` to share between detectors (the demo keeps
    one per process); a shared backbone keeps its device and input size (``device``/``image_size`` are ignored).
    """
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"threshold must be in [0, 1], got {threshold}")
    if image_size < 14:
        raise UsageError(f"image size must be at least 14 pixels, got {image_size}")
    cls = method_class(method)
    torch_device = backbone.device if isinstance(backbone, ClipBackbone) else resolve_device(device)
    dtype = resolve_precision(precision, torch_device)
    config_cls = cls.config_class
    config = None
    if config_cls is not None:
        known = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(method_options) - known)
        if unknown:
            raise UsageError(f"method '{method}' has no option(s) {unknown}; options: {sorted(known)}")
        config = config_cls(**method_options)
    elif method_options:
        raise UsageError(f"method '{method}' takes no options, got {sorted(method_options)}")
    if isinstance(backbone, ClipBackbone):
        if backbone.pos_interpolation != cls.pos_interpolation:
            raise UsageError(f"method '{method}' needs position embeddings resized {cls.pos_interpolation}ly, the "
                             f"shared backbone's were resized {backbone.pos_interpolation}ly; load one per mode")
        bb = backbone
    else:
        bb = load_backbone(backbone, image_size=image_size, device=torch_device, cache_dir=cache_dir,
                           pos_interpolation=cls.pos_interpolation, warn_random=warn_random)
    kwargs = {"config": config} if config is not None else {}
    detector = Detector(cls(bb, dtype=dtype, threshold=threshold, **kwargs), batch_size=batch_size)
    detector.setup(class_name)
    return detector


def score(paths: Iterable[ImageLike], method: str = "clip", **kwargs) -> list[AnomalyResult]:
    """One-shot convenience: ``create(method, **kwargs).score(paths)``."""
    class_name = kwargs.pop("class_name", None)
    return create(method, **kwargs).score(paths, class_name=class_name)
