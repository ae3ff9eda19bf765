"""Reference-guided (few-shot) scoring against known-good images: the memory bank (:mod:`.bank`), the method
(:mod:`.method`) and how detectors and evaluations get one (:mod:`.build`)."""

from zsad.methods.reference.bank import Bank, Exclusion, build_bank, greedy_coreset, nearest_distance
from zsad.methods.reference.build import draw_references, reference_method
from zsad.methods.reference.method import ReferenceConfig, ReferenceMethod

__all__ = ["Bank", "Exclusion", "ReferenceConfig", "ReferenceMethod", "build_bank", "reference_method",
           "draw_references", "greedy_coreset", "nearest_distance"]
