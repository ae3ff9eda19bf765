"""zsad's methods inside anomalib (``pip install "zsad[anomalib]"``).

    anomalib test --model zsad.integrations.anomalib.MuSc --data anomalib.data.MVTecAD --data.category bottle

    from anomalib.engine import Engine
    from zsad.integrations.anomalib import MuSc
    Engine().test(model=MuSc(), datamodule=MVTecAD(category="bottle"))

Classes: :class:`MuSc`, :class:`Auto`, :class:`Clip`, :class:`AnomalyClip` (``adapter=DIR``) and
:class:`ReferenceScoring` (few-shot), and :class:`Zsad` (any registered method by name); see :mod:`zsad.integrations.anomalib.lightning_model` for the pre- and
post-processing and how transductive methods see a whole set.
"""

from __future__ import annotations

try:
    import anomalib  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f'zsad.integrations.anomalib needs anomalib: pip install "zsad[anomalib]" ({exc})') from None

from zsad.integrations.anomalib.lightning_model import (
    AnomalyClip,
    Auto,
    Clip,
    MuSc,
    ReferenceScoring,
    Zsad,
    ZsadModule,
    ZsadPostProcessor,
)

__all__ = ["AnomalyClip", "Auto", "Clip", "MuSc", "ReferenceScoring", "Zsad", "ZsadModule", "ZsadPostProcessor"]
