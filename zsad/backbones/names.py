"""Backbone names as users write them, parsed into a spec.

Accepted forms:
    ``tiny-random``                a tiny CLIP with random weights (tests, smoke runs)
    ``ARCH:TAG``                   open_clip architecture and pretrained tag, e.g. ``ViT-L-14-336:openai``
    ``ARCH:random``                the real architecture with random weights (speed benchmarks)
    ``ARCH:/path/to/weights``      a local checkpoint file
    ``hf-hub:ORG/REPO``            an open_clip model published on the Hugging Face Hub
    ``timm:MODEL``                 a vision-only timm model with its pretrained tag, e.g.
                                   ``timm:vit_large_patch14_dinov2.lvd142m`` (no text tower)
    ``timm:MODEL:random``          the same architecture with random weights
    ``timm:MODEL:/path/to/file``   a local file: a timm state dict or the original release's (timm converts it)
    ``timm:tiny-dinov2:random``    a tiny DINOv2-style model built from a config (tests, smoke runs)
    ``radio:v2.5-l``               RADIO v2.5-L (AnomalyVFM's backbone; vision only), ``radio:v2.5-l:random``,
                                   ``radio:v2.5-l:/path``; ``radio:tiny:random`` a tiny one built in code
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zsad.errors import UsageError

DEFAULT_BACKBONE = "ViT-L-14-336:openai"
TINY_RANDOM = "tiny-random"
TIMM_PREFIX = "timm:"
#: the tiny DINOv2-style timm model (``timm:tiny-dinov2:random``), built from a config in ``zsad.backbones.tiny_dino``
TINY_DINO = "tiny-dinov2"
RADIO_PREFIX = "radio:"

SourceKind = Literal["tiny", "random", "tag", "file", "hf-hub"]


@dataclass(frozen=True)
class BackboneSpec:
    """Where a backbone's architecture and weights come from."""

    name: str
    kind: SourceKind
    arch: str
    source: str = ""
    #: "clip" (open_clip: image and text towers) or "timm" (vision only; ``arch`` is timm's model name with its tag)
    family: str = "clip"

    @property
    def random_weights(self) -> bool:
        return self.kind in ("tiny", "random")

    @property
    def vision_only(self) -> bool:
        """No text tower: methods that compare images with sentences cannot run on it."""
        return self.family in ("timm", "radio")


def parse_backbone_name(name: str) -> BackboneSpec:
    """Turn a user-facing backbone name into a :class:`BackboneSpec` (no I/O beyond checking a path)."""
    name = name.strip()
    if not name:
        raise UsageError("empty backbone name")
    if name == TINY_RANDOM:
        return BackboneSpec(name=name, kind="tiny", arch=TINY_RANDOM)
    if name.startswith(TIMM_PREFIX):
        return _parse_timm(name)
    if name.startswith(RADIO_PREFIX):
        return _parse_radio(name)
    if name.startswith("hf-hub:"):
        repo = name[len("hf-hub:"):]
        if repo.count("/") != 1:
            raise UsageError(f"backbone '{name}': expected hf-hub:ORG/REPO")
        return BackboneSpec(name=name, kind="hf-hub", arch=repo, source=repo)
    arch, sep, rest = name.partition(":")
    if not sep or not rest:
        raise UsageError(
            f"backbone '{name}': expected ARCH:TAG (e.g. {DEFAULT_BACKBONE}), ARCH:random, ARCH:/path/to/weights, "
            f"hf-hub:ORG/REPO or {TINY_RANDOM}"
        )
    if rest == "random":
        return BackboneSpec(name=name, kind="random", arch=arch)
    if "/" in rest or "\\" in rest or Path(rest).suffix in (".pt", ".pth", ".bin", ".safetensors"):
        return BackboneSpec(name=name, kind="file", arch=arch, source=rest)
    return BackboneSpec(name=name, kind="tag", arch=arch, source=rest)


def _parse_timm(name: str) -> BackboneSpec:
    """``timm:MODEL``, ``timm:MODEL:random`` or ``timm:MODEL:/path``; MODEL is timm's name, tag included."""
    return _parse_family(name, TIMM_PREFIX, "timm", TINY_DINO, "the tiny DINOv2",
                         "timm:MODEL (e.g. timm:vit_large_patch14_dinov2.lvd142m), timm:MODEL:random or "
                         "timm:MODEL:/path/to/weights")


def _parse_radio(name: str) -> BackboneSpec:
    """``radio:ARCH``, ``radio:ARCH:random`` or ``radio:ARCH:/path`` (ARCH: v2.5-l, or tiny with random or a file)."""
    return _parse_family(name, RADIO_PREFIX, "radio", "tiny", "the tiny RADIO",
                         "radio:v2.5-l, radio:v2.5-l:random, radio:v2.5-l:/path/to/weights or radio:tiny:random")


def _parse_family(name: str, prefix: str, family: str, tiny: str, tiny_words: str, forms: str) -> BackboneSpec:
    """``PREFIX:MODEL[:random|:/path]`` of a vision-only family; its tiny test model has no released weights."""
    model, sep, rest = name[len(prefix):].partition(":")
    if not model or (sep and not rest):
        raise UsageError(f"backbone '{name}': expected {forms}")
    if rest == "random":
        return BackboneSpec(name=name, kind="random", arch=model, family=family)
    if rest:
        return BackboneSpec(name=name, kind="file", arch=model, source=rest, family=family)
    if model == tiny:
        raise UsageError(f"backbone '{name}': {tiny_words} has no released weights; use {prefix}{tiny}:random or "
                         f"{prefix}{tiny}:/path/to/weights")
    return BackboneSpec(name=name, kind="tag", arch=model, family=family)
