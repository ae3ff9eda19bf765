"""The one interface every answerer implements: the grounded rules and the LVLM alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from PIL import Image

from zsad.dialogue.evidence import Evidence


@runtime_checkable
class Responder(Protocol):
    """Answers one question about one image from the detector's evidence (and, if it can look, the image)."""

    name: str

    def answer(self, question: str, evidence: Evidence, *, image: Image.Image | None = None,
               overlay: Image.Image | None = None, history: Sequence[tuple[str, str]] = ()) -> str: ...
