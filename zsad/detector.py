"""The Python entry point: ``create(...)`` builds a :class:`Detector`; ``Detector.score`` scores images."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator

import torch
from PIL import Image

from zsad.backbones import DEFAULT_BACKBONE, BackboneSpec, load_backbone, parse_backbone_name
from zsad.backbones.base import Backbone
from zsad.backbones.timm import vision_only_message
from zsad.decisions import DEFAULT_GOOD_QUANTILE, DEFAULT_THRESHOLD, Thresholds
from zsad.device import resolve_device, resolve_precision
from zsad.errors import ImageError, UsageError
from zsad.methods import DEFAULT_METHOD, method_class
from zsad.methods.base import Method
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
    method: str = DEFAULT_METHOD,
    *,
    backbone: str | Backbone | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    image_size: int | None = None,
    batch_size: int = 8,
    threshold: float = DEFAULT_THRESHOLD,
    class_name: str | None = None,
    cache_dir: str | None = None,
    warn_random: bool = True,
    activation: str = "auto",
    references: Iterable[ImageLike] | None = None,
    runtime: str = "torch",
    export: str | os.PathLike | None = None,
    threads: int | None = None,
    **method_options,
) -> Detector:
    """Build a detector: THE one place a method is built (the command line, ``evaluate``, ``export``, the demo
    and ``ask`` all call it). ``method_options`` are fields of the method's config dataclass (e.g. ``prompts=``).

    ``backbone`` is a name (``zsad models``), or an already loaded :class:`~zsad.backbones.base.Backbone` (CLIP,
    timm or an export opened by :func:`zsad.backbones.onnx.open_export`) to share between detectors: a loaded
    backbone keeps its device, input size and weights (``device``/``image_size`` are ignored; a method needing
    another activation gets a view sharing the weights).
    ``threshold`` is the default decision threshold (image scores and map values); see :mod:`zsad.decisions`.
    ``activation`` is the backbone's MLP activation, ``gelu`` or ``quick_gelu``; ``auto`` (default) is what the
    method's published code used (:func:`resolve_activation`). ``detector.backbone.activation`` says which ran.
    ``references`` (known-good images: paths or PIL) score every image against them instead
    (:mod:`zsad.methods.reference`; ``method`` then only says whether groups are scored jointly: musc, auto), or
    the method's own ``reference_scorer`` (``anomalydino``: AnomalyDINO's few-shot scoring).
    ``runtime="onnx"`` (or ``"onnx-int8"``) with ``export=DIR`` (made by ``zsad export``) opens that folder as
    the backbone: the forward runs on ONNX Runtime, needing no PyTorch weights; with ``references`` the folder
    must be a ``musc`` export (reference scoring uses MuSc's patch tokens). ``"openvino"`` / ``"openvino-int8"``
    run the same folder's graphs on OpenVINO; ``"auto"`` the fastest measured at export whose fidelity passed
    (``detector.backbone.runtime`` says which). ``threads``: the export engine's intra-op threads (default
    torch's thread count).
    ``backbone`` / ``image_size`` left out: the scoring class's defaults (:func:`default_model`).
    """
    base = method_class(method)
    scoring = base
    if references is not None:
        from zsad.methods.reference import ReferenceMethod

        scoring = base.reference_scorer or ReferenceMethod
        method_options = {"batch_size": batch_size, **method_options}
    default_backbone, default_size = default_model(method, references=references is not None)
    backbone = default_backbone if backbone is None else backbone
    image_size = default_size if image_size is None else image_size
    if image_size < 14:
        raise UsageError(f"image size must be at least 14 pixels, got {image_size}")
    exported = runtime != "torch" or export is not None
    if (exported or (isinstance(backbone, Backbone) and backbone.export is not None)) and not (
            scoring.exportable or scoring.feature_method):
        raise UsageError(f"method '{scoring.name}' cannot score from an ONNX export (it prepares images its own way); "
                         f"use --runtime torch")
    if exported:
        _check_runtime(runtime, export, backbone, precision)
        from zsad.backbones.export_folder import read_manifest

        folder, manifest = read_manifest(export)
        method_options = _export_options(scoring, base, folder, manifest, method_options, backbone=backbone,
                                         image_size=image_size, activation=activation)
    elif isinstance(backbone, Backbone) and backbone.export is not None:  # an opened export, shared
        folder, manifest = backbone.export.path, backbone.export.manifest
        method_options = _export_options(scoring, base, folder, manifest, method_options, backbone=manifest.backbone,
                                         image_size=manifest.image_size, activation=activation)
    config = scoring.make_config(method_options)  # every option is checked here, before any weights load
    if exported:
        from zsad.backbones.onnx import open_export

        backbone = open_export(folder, runtime, device=device, threads=threads)
    bb = backbone_for(scoring, backbone, image_size=image_size, device=device, activation=activation,
                      cache_dir=cache_dir, warn_random=warn_random)
    dtype = torch.float32 if bb.export is not None else resolve_precision(precision, bb.device)
    extra = {"base": base} if references is not None else {}
    built = scoring(bb, dtype=dtype, **({"config": config} if config is not None else {}), **extra)
    if class_name is None and bb.export is not None:
        class_name = bb.export.only_class
    built.setup(class_name)  # before the dry run: an export holds the text of its class names only
    if bb.export is not None:
        with bb.dry_run(), torch.inference_mode():  # the method's backbone call is checked against the export now
            built.extract(torch.zeros(1, 3, bb.image_size, bb.image_size))
    if references is not None:
        built.set_references(list(references))
    detector = Detector(built, batch_size=batch_size, thresholds=Thresholds(threshold))
    return detector


def default_model(method: str | type[Method], *, references: bool = False) -> tuple[str, int]:
    """The backbone name and input size ``create(method)`` uses when none is given: the scoring class's own
    (``default_backbone``, ``default_image_size``; with ``references`` its ``reference_scorer``'s), else the
    library's (CLIP ViT-L/14@336 at 518)."""
    cls = method_class(method) if isinstance(method, str) else method
    scoring = (cls.reference_scorer or cls) if references else cls
    return (scoring.default_backbone or cls.default_backbone or DEFAULT_BACKBONE,
            scoring.default_image_size or cls.default_image_size or 518)


def backbone_for(method: str | type[Method], backbone: str | Backbone = DEFAULT_BACKBONE, *, image_size: int = 518,
                 device: str | torch.device = "auto", activation: str = "auto", cache_dir: str | None = None,
                 warn_random: bool = True) -> Backbone:
    """The backbone ``method`` runs on: a name loaded with the method's position-embedding resize and activation
    (:meth:`Method.activation_for`), or a loaded backbone as it is or as a view with that activation sharing its
    weights. A method that needs text refuses a vision-only backbone here, before any weights load. ``create``
    calls it; so does ``zsad export``, which records the text the method embeds on the backbone it gets."""
    cls = method_class(method) if isinstance(method, str) else method
    if isinstance(backbone, str):
        if cls.needs_text and parse_backbone_name(backbone).vision_only:
            raise UsageError(vision_only_message(cls.name, backbone))
        act = cls.activation_for(activation, backbone, image_size, cache_dir=cache_dir)
        return load_backbone(backbone, image_size=image_size, device=resolve_device(device), cache_dir=cache_dir,
                             pos_interpolation=cls.pos_interpolation_for(backbone), activation=act,
                             warn_random=warn_random)
    if cls.needs_text and not backbone.has_text:
        raise UsageError(vision_only_message(cls.name, backbone.spec.name))
    if backbone.export is not None:  # an export runs what it was traced with (checked against the request)
        return backbone
    if backbone.pos_interpolation != cls.pos_interpolation_for(backbone.spec):
        raise UsageError(f"method '{cls.name}' needs position embeddings resized "
                         f"{cls.pos_interpolation_for(backbone.spec)}ly, "
                         f"the shared backbone's were resized {backbone.pos_interpolation}ly; load one per mode")
    return backbone.with_activation(cls.activation_for(activation, backbone.spec, backbone.image_size,
                                                       cache_dir=cache_dir))


def _check_runtime(runtime: str, export, backbone, precision: str) -> None:
    """Arguments an ONNX runtime cannot take are refused before anything is read."""
    from zsad.backbones.export_folder import AUTO, RUNTIMES

    if runtime not in RUNTIMES and runtime != AUTO:
        raise UsageError(f"unknown runtime '{runtime}' (use torch, {', '.join(RUNTIMES)} or {AUTO})")
    if export is None:
        raise UsageError(f"runtime '{runtime}' scores from an export folder: pass export=DIR (--export DIR), made "
                         f"with `zsad export`")
    if not isinstance(backbone, str):
        raise UsageError("with an ONNX runtime, backbone must be the name the export was made for, not a model")
    if precision not in ("auto", "fp32"):
        raise UsageError(f"precision '{precision}' does not apply to an ONNX export: runtime 'onnx' runs fp32, "
                         f"'onnx-int8' the int8 graph")


def _export_options(scoring: type[Method], base: type[Method], folder, manifest, options: dict, *, backbone: str,
                    image_size: int, activation: str) -> dict:
    """The method options of a detector scoring from an export: the export's own, overridden by those given; an
    export made for something else than asked is refused (:func:`~zsad.backbones.export_folder.check_request`)."""
    from zsad.backbones.export_folder import PROMPTS, check_request

    feature_method = scoring.feature_method or base.name
    if manifest.method != feature_method and scoring is not base:
        raise UsageError(f"export {folder} was made for method {manifest.method!r}; scoring against references uses "
                         f"{feature_method}'s patch tokens: export with method {feature_method!r}")
    options = dict(options)
    check_request(manifest, method=feature_method, backbone=backbone, image_size=image_size, activation=activation,
                  adapter=options.pop("adapter", None), where=str(folder))
    stored = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest.options.items() if k != "adapter"}
    if "prompts" in stored:
        stored["prompts"] = str(folder / PROMPTS)
    if scoring is not base:  # references: only the export's feature settings carry over
        known = {f.name for f in dataclasses.fields(scoring.config_class)}
        stored = {k: v for k, v in stored.items() if k in known}
    return {**stored, **options}


def resolve_activation(method: str | type[Method], backbone: str | BackboneSpec, image_size: int,
                       activation: str = "auto", *, cache_dir: str | None = None) -> str:
    """The MLP activation a detector of ``method`` runs with (:meth:`Method.activation_for`): ``activation`` when it
    names one, else (``auto``) what the method's published code used with these weights at this size."""
    cls = method_class(method) if isinstance(method, str) else method
    return cls.activation_for(activation, backbone, image_size, cache_dir=cache_dir)


def score(paths: Iterable[ImageLike], method: str = DEFAULT_METHOD, **kwargs) -> list[AnomalyResult]:
    """One-shot convenience: ``create(method, **kwargs).score(paths)``."""
    class_name = kwargs.pop("class_name", None)
    return create(method, **kwargs).score(paths, class_name=class_name)


__all__ = ["Detector", "create", "default_model", "resolve_activation", "score"]
