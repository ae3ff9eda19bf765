"""What every method is: a frozen-backbone ``nn.Module`` that turns preprocessed images into raw outputs.

Every method works in the same three steps, so the runner can stream chunks of images and decide in one place
whether a batch is scored jointly or image by image:

    extract(chunk) -> features;  combine([features, ...]) -> features;  raw(features, sizes) -> RawOutput, ...

Independent methods (clip, anomalyclip) call ``raw`` chunk by chunk; transductive ones (musc, auto) combine the
features of a whole group first. Methods return no labels, masks or thresholds (see :mod:`zsad.decisions`) and
know nothing about files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from zsad.backbones import BackboneSpec, ClipBackbone, parse_backbone_name
from zsad.backbones.activation import AUTO, check_activation, weights_activation
from zsad.types import RawOutput


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
    #: Fewest images a joint batch needs (transductive methods).
    min_batch: ClassVar[int] = 1
    #: True when images are scored jointly, so a group's features must all be extracted before ``raw``.
    transductive: ClassVar[bool] = False
    #: Position-embedding interpolation this method was published with.
    pos_interpolation: ClassVar[str] = "bicubic"
    #: Frozen dataclass of the method's options (``create(**options)`` fills it), or None.
    config_class: ClassVar[type | None] = None

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

    def __init__(self, backbone: ClipBackbone, *, dtype: torch.dtype) -> None:
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

    def extract(self, images: torch.Tensor) -> Any:
        """Features of ``[B, 3, S, S]`` preprocessed images, on the host (small enough to keep per image)."""
        raise NotImplementedError

    @staticmethod
    def combine(chunks: Sequence[Any]) -> Any:
        """The features of several chunks as one, in order."""
        raise NotImplementedError

    def raw(self, features: Any, sizes: Sequence[tuple[int, int]]) -> Iterator[RawOutput]:
        """One :class:`RawOutput` per image of ``features``, in order; ``sizes`` are the originals' (width, height)."""
        raise NotImplementedError

    def raw_across(self, features: Any, sizes: Sequence[tuple[int, int]], share: Share) -> Iterator[RawOutput]:
        """Like :meth:`raw` for a group spread over ranks: ``features`` (None when this rank holds no image) are
        this rank's share; yields the outputs of this rank's images only. This default gathers every rank's
        features on every rank (memory: the whole group's features); MuSc and auto override it with exact
        scoring that keeps only this rank's share."""
        every = share.comm.all_gather_object((features, list(sizes)), "gathering a group's features")
        present = [(f, z) for f, z in every if f is not None]
        outputs = self.raw(self.combine([f for f, _ in present]), [size for _, z in present for size in z])
        for index, output in enumerate(outputs):
            if share.offset <= index < share.offset + len(sizes):
                yield output
