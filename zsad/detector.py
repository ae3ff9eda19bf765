"""The Python entry point: ``create(...)`` builds a :class:`Detector`; ``Detector.score`` scores images."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator

import torch
from PIL import Image

from zsad.backbones import DEFAULT_BACKBONE, BackboneSpec, ClipBackbone, load_backbone
from zsad.decisions import DEFAULT_GOOD_QUANTILE, DEFAULT_THRESHOLD, Thresholds
from zsad.errors import ImageError, UsageError
from zsad.methods import method_class
from zsad.methods.base import Method
from zsad.runtime import resolve_device, resolve_precision
from zsad.types import AnomalyResult

log = logging.getLogger(__name__)

ImageLike = str | os.PathLike | Image.Image


class Detector:
    """A method bound to a backbone, a device, a precision and default thresholds; scores images through the
    runner (:mod:`zsad.runner`), which decides whether a batch is scored jointly or image by image."""

    def __init__(self, method: Method, *, batch_size: int = 8, thresholds: Thresholds | None = None) -> None:
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        self.method = method
        self.batch_size = batch_size
        self.thresholds = thresholds or Thresholds()

    @property
    def backbone(self):
        return self.method.backbone

    @property
    def name(self) -> str:
        return self.method.name

    def setup(self, class_name: str | None = None) -> None:
        self.method.setup(class_name)

    def runner(self, **options):
        """A :class:`zsad.runner.Runner` over this detector (options: ``max_pixels``, ``thresholds``,
        ``keep_images``)."""
        from zsad.runner import Runner

        return Runner(self, **options)

    def stream(self, images: Iterable[ImageLike], *, group_by: str = "none", **options) -> Iterator:
        """Outcomes (:class:`zsad.runner.Outcome`) one at a time, for large inputs: a bad file is an outcome with
        ``error`` set, never an exception. Transductive methods score each group jointly."""
        from zsad.runner import as_sources

        return self.runner(**options).run(as_sources(images), group_by=group_by)

    def thresholds_from_good(self, good_images: Iterable[ImageLike], quantile: float = DEFAULT_GOOD_QUANTILE):
        """:class:`~zsad.decisions.GoodThresholds` from known-good images scored on their own (e.g. a category's
        ``train/good``); pass them to :meth:`score` as ``thresholds=``. Independent methods only: transductive ones
        score relative to their batch, so their good images must join it (``zsad score --threshold-from``)."""
        from zsad.runner import GoodImages, as_sources

        good = as_sources(good_images)
        if not good:
            raise UsageError("a threshold from good images needs at least one known-good image")
        if self.method.transductive:
            raise UsageError(f"method '{self.name}' scores relative to its batch, so good images scored alone give "
                             f"no usable threshold; use `zsad score --threshold-from GOOD`, which scores them with "
                             f"the batch")
        return GoodImages(self.runner(), good, quantile).thresholds

    def score(self, images: Iterable[ImageLike], *, class_name: str | None = None,
              thresholds: Thresholds | None = None) -> list[AnomalyResult]:
        """Score images (PIL or paths), all as one batch. A bad file raises :class:`ImageError` naming it; NaN or
        inf in a method's numbers raises :class:`~zsad.errors.ScoreError`."""
        from zsad.errors import ScoreError
        from zsad.runner import as_sources

        if class_name is not None:
            self.setup(class_name)
        runner = self.runner(thresholds=thresholds)
        # every file is decoded (and so checked) before any model work; the runner takes the decoded pixels
        sources = [dataclasses.replace(s, image=runner.decode(s)) for s in as_sources(images)]
        results = []
        for outcome in runner.run(sources):
            if outcome.error is not None:
                if outcome.source.path is None:
                    raise ScoreError(outcome.error)
                raise ImageError(outcome.source.path, outcome.error)
            results.append(outcome.result)
        return results


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
    activation: str = "auto",
    references: Iterable[ImageLike] | None = None,
    runtime: str = "torch",
    export: str | os.PathLike | None = None,
    **method_options,
) -> Detector:
    """Build a detector. ``method_options`` are fields of the method's config dataclass (e.g. ``prompts=``).

    ``backbone`` is a name, or an already loaded :class:`ClipBackbone` to share between detectors (the demo keeps
    one per process); a shared backbone keeps its device, input size and weights (``device``/``image_size`` are
    ignored; a method needing another activation gets a view sharing the weights).
    ``threshold`` is the default decision threshold (image scores and map values); see :mod:`zsad.decisions`.
    ``activation`` is the backbone's MLP activation, ``gelu`` or ``quick_gelu``; ``auto`` (default) is what the
    method's published code used (:func:`resolve_activation`). ``detector.backbone.activation`` says which ran.
    ``references`` (known-good images: paths or PIL) score every image against them instead
    (:mod:`zsad.methods.reference`; ``method`` then only says whether batches are joint: musc, auto).
    ``runtime="onnx"`` (or ``"onnx-int8"``) with ``export=DIR`` (made by ``zsad export``) runs the backbone
    forward on ONNX Runtime from that folder, needing no PyTorch weights (:mod:`zsad.export.runtime`); with
    ``references`` the folder must be a ``musc`` export (reference scoring uses MuSc's patch tokens).
    """
    thresholds = Thresholds(threshold)
    if image_size < 14:
        raise UsageError(f"image size must be at least 14 pixels, got {image_size}")
    if runtime != "torch" or export is not None:
        from zsad.export.runtime import create_onnx_method, create_onnx_reference_method

        if references is not None:
            scorer = create_onnx_reference_method(method, export, list(references), runtime=runtime,
                                                  backbone=backbone, device=device, precision=precision,
                                                  image_size=image_size, activation=activation,
                                                  batch_size=batch_size, **method_options)
            return Detector(scorer, batch_size=batch_size, thresholds=thresholds)
        onnx_method, only_class = create_onnx_method(method, export, runtime=runtime, backbone=backbone,
                                                     device=device, precision=precision, image_size=image_size,
                                                     activation=activation, **method_options)
        detector = Detector(onnx_method, batch_size=batch_size, thresholds=thresholds)
        detector.setup(class_name if class_name is not None else only_class)
        return detector
    cls = method_class(method)
    if references is not None:
        from zsad.methods.reference import reference_method

        return Detector(reference_method(method, list(references), backbone=backbone, device=device,
                                         precision=precision, image_size=image_size, batch_size=batch_size,
                                         cache_dir=cache_dir, warn_random=warn_random, activation=activation,
                                         **method_options), batch_size=batch_size, thresholds=thresholds)
    if isinstance(backbone, str) and getattr(cls, "needs_text", True):
        from zsad.backbones import parse_backbone_name

        if parse_backbone_name(backbone).vision_only:
            from zsad.backbones.timm import vision_only_message

            raise UsageError(vision_only_message(method, backbone))
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
        bb = backbone.with_activation(cls.activation_for(activation, backbone.spec, backbone.image_size,
                                                         cache_dir=cache_dir))
    else:
        act = cls.activation_for(activation, backbone, image_size, cache_dir=cache_dir)
        bb = load_backbone(backbone, image_size=image_size, device=torch_device, cache_dir=cache_dir,
                           pos_interpolation=cls.pos_interpolation, activation=act, warn_random=warn_random)
    kwargs = {"config": config} if config is not None else {}
    detector = Detector(cls(bb, dtype=dtype, **kwargs), batch_size=batch_size, thresholds=thresholds)
    detector.setup(class_name)
    return detector


def resolve_activation(method: str | type[Method], backbone: str | BackboneSpec, image_size: int,
                       activation: str = "auto", *, cache_dir: str | None = None) -> str:
    """The MLP activation a detector of ``method`` runs with (:meth:`Method.activation_for`): ``activation`` when it
    names one, else (``auto``) what the method's published code used with these weights at this size."""
    cls = method_class(method) if isinstance(method, str) else method
    return cls.activation_for(activation, backbone, image_size, cache_dir=cache_dir)


def score(paths: Iterable[ImageLike], method: str = "clip", **kwargs) -> list[AnomalyResult]:
    """One-shot convenience: ``create(method, **kwargs).score(paths)``."""
    class_name = kwargs.pop("class_name", None)
    return create(method, **kwargs).score(paths, class_name=class_name)


__all__ = ["Detector", "create", "resolve_activation", "score"]
