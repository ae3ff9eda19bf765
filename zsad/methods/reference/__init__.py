"""Reference-guided (few-shot) scoring against known-good images: the memory bank (:mod:`.bank`), the method
(:mod:`.method`, built by ``zsad.create(..., references=...)``) and few-shot draws from a dataset (:mod:`.shots`)."""

from zsad.methods.reference.bank import Bank, Exclusion, build_bank, greedy_coreset, nearest_distance
from zsad.methods.reference.method import ReferenceConfig, ReferenceMethod
from zsad.methods.reference.shots import draw_references

__all__ = ["Bank", "Exclusion", "ReferenceConfig", "ReferenceMethod", "build_bank", "draw_references",
           "greedy_coreset", "nearest_distance"]
