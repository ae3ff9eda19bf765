"""AnomalyDINO (Damm et al., WACV 2025; dammsi/AnomalyDINO): DINOv2 patch tokens scored by their cosine distance to
known-good references (few-shot, :mod:`.reference`) or to the other images of a batch (zero-shot, :mod:`.method`),
each as the official code does it."""

from zsad.methods.anomalydino.features import DinoFeatures
from zsad.methods.anomalydino.reference import AnomalyDinoReference, AnomalyDinoReferenceConfig

__all__ = ["AnomalyDinoReference", "AnomalyDinoReferenceConfig", "DinoFeatures"]
