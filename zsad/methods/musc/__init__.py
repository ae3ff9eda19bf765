"""MuSc (Li et al., ICLR 2024) along its own stages: :mod:`.lnamd` -> :mod:`.msm` -> :mod:`.rscin`, and the
method that strings them together (:mod:`.method`)."""

from zsad.methods.musc.lnamd import lnamd
from zsad.methods.musc.method import MIN_IMAGES, MuscConfig, MuscFeatures, MuscMethod, concat_features
from zsad.methods.musc.msm import musc_patch_scores, mutual_scores, mutual_scores_reference, sample_references
from zsad.methods.musc.rscin import rscin

__all__ = ["MIN_IMAGES", "MuscConfig", "MuscFeatures", "MuscMethod", "concat_features", "lnamd", "musc_patch_scores",
           "mutual_scores", "mutual_scores_reference", "rscin", "sample_references"]
