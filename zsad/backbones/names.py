"""Backbone names as users write them, parsed into a spec.

Accepted forms:
    ``tiny-random``                a tiny CLIP with random weights (tests, smoke runs)
    ``ARCH:TAG``                   open_clip architecture and pretrained tag, e.g. ``ViT-L-14-336:openai``
    ``ARCH:random``                the real architecture with random weights (speed benchmarks)
    ``ARCH:/path/to/weights``      a local checkpoint file
    ``hf-hub:ORG/REPO``            an open_clip model published on the Hugging Face Hub
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zsad.errors import UsageError

DEFAULT_BACKBONE = "ViT-L-14-336:openai"
TINY_RANDOM = "tiny-random"

SourceKind = Literal["tiny", "random", "tag", "file", "hf-hub"]


@dataclass(frozen=True)
class BackboneSpec:
    """Where a backbone's architecture and weights come from."""

    name: str
    kind: SourceKind
    arch: str
    source: str = ""

    @property
    def random_weights(self) -> bool:
        return self.kind in ("tiny", "random")


def parse_backbone_name(name: str) -> BackboneSpec:
    """Turn a user-facing backbone name into a :class:`BackboneSpec` (no I/O beyond checking a path)."""
    name = name.strip()
    if not name:
        raise UsageError("empty backbone name")
    if name == TINY_RANDOM:
        return BackboneSpec(name=name, kind="tiny", arch=TINY_RANDOM)
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
