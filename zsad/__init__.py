"""zsad: zero-shot vision-language anomaly detection.

    import zsad
    detector = zsad.create("clip", backbone="ViT-L-14-336:openai")
    results = detector.score(["part.png"])          # list[AnomalyResult]

Heavy modules (torch, open_clip) load on first use, so ``import zsad`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zsad.errors import ZsadError
from zsad.types import AnomalyResult, Region

__version__ = "0.1.0"

if TYPE_CHECKING:
    from zsad.detector import Detector, create, score


def __getattr__(name: str) -> Any:
    if name in ("create", "score", "Detector"):
        from zsad import detector

        return getattr(detector, name)
    if name == "list_methods":
        from zsad.methods import list_methods

        return list_methods
    raise AttributeError(f"module 'zsad' has no attribute {name!r}")


__all__ = ["AnomalyResult", "Detector", "Region", "ZsadError", "create", "list_methods", "score"]
