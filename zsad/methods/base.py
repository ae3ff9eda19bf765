"""What every method is: a frozen-backbone ``nn.Module`` that turns preprocessed images into results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from zsad.backbones import ClipBackbone
from zsad.types import AnomalyResult


class Method(nn.Module):
    """Base of the scoring methods.

    Subclasses set ``name``, may raise ``min_batch`` (transductive methods score a batch jointly), and
    implement :meth:`score_tensors`. Device and compute dtype are given, never guessed.
    """

    name: ClassVar[str] = ""
    min_batch: ClassVar[int] = 1
    #: True when images are scored jointly, so the whole batch must be passed at once.
    transductive: ClassVar[bool] = False
    #: Position-embedding interpolation this method was published with.
    pos_interpolation: ClassVar[str] = "bicubic"
    #: Frozen dataclass of the method's options (``create(**options)`` fills it), or None.
    config_class: ClassVar[type | None] = None

    def __init__(self, backbone: ClipBackbone, *, dtype: torch.dtype, threshold: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.dtype = dtype
        self.threshold = threshold
        self.class_name = "object"

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def setup(self, class_name: str | None = None) -> None:
        """Prepare for a category (e.g. text embeddings); ``None`` means the generic word "object"."""
        self.class_name = (class_name or "object").strip() or "object"

    def score_tensors(
        self, images: torch.Tensor, sizes: Sequence[tuple[int, int]], paths: Sequence[str | None]
    ) -> list[AnomalyResult]:
        """Score ``[B, 3, S, S]`` preprocessed images whose original ``(width, height)`` are ``sizes``."""
        raise NotImplementedError

    # Transductive methods score a batch jointly in three steps, so features of thousands of images can be
    # extracted chunk by chunk and full-size maps are produced one at a time:
    #   extract(chunk) -> features;  combine([features, ...]) -> features;  results(features, sizes, paths)
    def extract(self, images: torch.Tensor):
        raise NotImplementedError(f"method '{self.name}' is not transductive")

    @staticmethod
    def combine(chunks: Sequence):
        raise NotImplementedError

    def results(self, features, sizes: Sequence[tuple[int, int]], paths: Sequence[str | None]):
        raise NotImplementedError
