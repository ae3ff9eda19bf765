"""What every method is: a frozen-backbone ``nn.Module`` that turns preprocessed images into raw outputs, and
says on its class what it can do.

Every method works in the same steps, so the runner can stream chunks of images and decide in one place how a
group is scored:

    extract(chunk) -> features;  combine([features, ...]) -> features;
    raw(features, sizes) -> RawOutput, ...        (independent: each image on its own)
    raw_joint(features, sizes) -> RawOutput, ...  (joint: the images of a group score each other)

Capabilities (class attributes, read by the builder, the runner and every front end's lists): ``needs_text``,
``min_batch`` (fewest images it scores at all), ``joint_from`` (fewest images scored jointly; 0 = never joint),
``exportable``, ``adapter_kind``; :meth:`Method.mode` is the per-group decision the runner asks for. Methods return
no labels, masks or thresholds (see :mod:`zsad.decisions`) and know nothing about files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from zsad.backbones import BackboneSpec, parse_backbone_name
from zsad.backbones.activation import AUTO, check_activation, weights_activation
from zsad.backbones.base import Backbone
from zsad.errors import UsageError
from zsad.types import RawOutput

#: how the runner scores a group (:meth:`Method.mode`)
JOINT = "joint"
INDEPENDENT = "independent"


@dataclass(frozen=True)
class Share:
    """This rank's part of a group that several ranks score jointly: ``counts[r]`` images on rank r, in order."""

    comm: Any  # zsad.distributed.Dist
    counts: tuple[int, ...]

    @property
    def offset(self) -> int:
        return sum(self.counts[: self.comm.rank])

    @property
    def total(self) -> int:
        return sum(self.counts)


class Method(nn.Module):
    """Base of the scoring methods. Device and compute dtype are given, never guessed."""

    name: ClassVar[str] = ""
    #: one line for lists (``zsad models``, the demo's method choice)
    summary: ClassVar[str] = ""
    #: compares images with text, so it needs a backbone with a text tower (CLIP)
    needs_text: ClassVar[bool] = True
    #: fewest images of one group the method can score at all
    min_batch: ClassVar[int] = 1
    #: fewest images of a group that are scored jointly (they score each other); 0: never joint
    joint_from: ClassVar[int] = 0
    #: ``zsad export`` can write its backbone call as an ONNX graph
    exportable: ClassVar[bool] = False
    #: the adapter kind it needs (``adapter.json``'s ``kind``), or None
    adapter_kind: ClassVar[str | None] = None
    #: the method whose backbone call (and so whose export) this one reuses; None: its own
    feature_method: ClassVar[str | None] = None
    #: names of the outputs of the method's own ``forward(images)`` when ``zsad export`` writes the whole method as
    #: the graph (``vfm``: folded adapters, decoder and head); empty: the graph is the backbone's ``tokens`` call
    graph_outputs: ClassVar[tuple[str, ...]] = ()
    #: Position-embedding interpolation this method was published with.
    pos_interpolation: ClassVar[str] = "bicubic"
    #: Frozen dataclass of the method's options (``create(**options)`` fills it), or None.
    config_class: ClassVar[type | None] = None
    #: the backbone and input size ``create()`` uses when none is given (None: the library's defaults)
    default_backbone: ClassVar[str | None] = None
    default_image_size: ClassVar[int | None] = None
    #: the class ``create(method, references=...)`` builds to score against known-good images (None: the
    #: MuSc-feature bank, :class:`~zsad.methods.reference.ReferenceMethod`)
    reference_scorer: ClassVar[type[Method] | None] = None

    @property
    def transductive(self) -> bool:
        """True when some group size is scored jointly, so the runner keeps a group's features until it knows
        the group's size (:meth:`mode`)."""
        return self.joint_from > 0

    def mode(self, images: int, *, spread: bool = False) -> str | None:
        """How a group of ``images`` is scored: :data:`JOINT`, :data:`INDEPENDENT`, or None when they are too few
        (the runner then reports the one "too few images" error). ``spread``: the group is spread over ranks
        (joint scoring then goes through :meth:`raw_across`)."""
        if images < self.min_batch:
            return None
        return JOINT if self.joint_from and images >= self.joint_from else INDEPENDENT

    @classmethod
    def make_config(cls, options: dict[str, Any]) -> Any:
        """The method's config from ``create(**options)``; an option it does not have is refused by name."""
        if cls.config_class is None:
            if options:
                raise UsageError(f"method '{cls.name}' takes no options, got {sorted(options)}")
            return None
        known = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(f"method '{cls.name}' has no option(s) {unknown}; options: {sorted(known)}")
        return cls.config_class(**options)

    @classmethod
    def pos_interpolation_for(cls, backbone: str | BackboneSpec) -> str:
        """The position-embedding resize this method runs ``backbone`` with: :attr:`pos_interpolation` unless the
        published code resized each backbone family its own way (``vfm``)."""
        return cls.pos_interpolation

    @classmethod
    def published_activation(cls, spec: BackboneSpec, image_size: int, *, cache_dir: str | None = None) -> str:
        """The MLP activation ``activation="auto"`` resolves to: what this method's published code ran these
        weights with. By default the weights' own (QuickGELU for OpenAI's: AnomalyCLIP's loader builds every
        block with QuickGELU); MuSc overrides it."""
        return weights_activation(spec, cache_dir=cache_dir)

    @classmethod
    def activation_for(cls, activation: str, backbone: str | BackboneSpec, image_size: int, *,
                       cache_dir: str | None = None) -> str:
        """The activation this method runs ``backbone`` with: ``activation`` when it names one (``gelu`` /
        ``quick_gelu``), else (``auto``) :meth:`published_activation`. Needs no weights, so a run's records can
        name it before (or without) loading the model."""
        if check_activation(activation) != AUTO:
            return activation
        spec = parse_backbone_name(backbone) if isinstance(backbone, str) else backbone
        return cls.published_activation(spec, image_size, cache_dir=cache_dir)

    def __init__(self, backbone: Backbone, *, dtype: torch.dtype) -> None:
        super().__init__()
        self.backbone = backbone
        self.dtype = dtype
        self.class_name = "object"

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def setup(self, class_name: str | None = None) -> None:
        """Prepare for a category (e.g. text embeddings); ``None`` means the generic word "object"."""
        self.class_name = (class_name or "object").strip() or "object"

    def dataset_defaults(self, dataset_format: str, category: str) -> None:
        """Apply a benchmark's published per-category settings (``zsad evaluate``); most methods have none."""

    def preprocess(self, images: Sequence[Any]) -> Any:
        """Decoded RGB images -> what :meth:`extract` takes: the backbone's squash-resize by default; a method with
        its own preparation (AnomalyDINO keeps the aspect ratio) overrides it."""
        return self.backbone.preprocess(images)

    def extract(self, images: torch.Tensor) -> Any:
        """Features of ``[B, 3, S, S]`` preprocessed images, on the host (small enough to keep per image)."""
        raise NotImplementedError

    @staticmethod
    def combine(chunks: Sequence[Any]) -> Any:
        """The features of several chunks as one, in order."""
        raise NotImplementedError

    def raw(self, features: Any, sizes: Sequence[tuple[int, int]]) -> Iterator[RawOutput]:
        """One :class:`RawOutput` per image of ``features``, each from that image alone, in order; ``sizes`` are
        the originals' (width, height)."""
        raise NotImplementedError(f"method '{self.name}' does not score images on their own")

    def raw_joint(self, features: Any, sizes: Sequence[tuple[int, int]]) -> Iterator[RawOutput]:
        """One :class:`RawOutput` per image of a group scored jointly (the images score each other), in order."""
        raise NotImplementedError(f"method '{self.name}' does not score images jointly")

    def raw_across(self, features: Any, sizes: Sequence[tuple[int, int]], share: Share) -> Iterator[RawOutput]:
        """Like :meth:`raw_joint` for a group spread over ranks: ``features`` (None when this rank holds no image)
        are this rank's share; yields the outputs of this rank's images only. This default gathers every rank's
        features on every rank (memory: the whole group's features); MuSc and auto override it with exact
        scoring that keeps only this rank's share."""
        every = share.comm.all_gather_object((features, list(sizes)), "gathering a group's features")
        present = [(f, z) for f, z in every if f is not None]
        outputs = self.raw_joint(self.combine([f for f, _ in present]), [size for _, z in present for size in z])
        for index, output in enumerate(outputs):
            if share.offset <= index < share.offset + len(sizes):
                yield output
