"""Small phrases shared by the grounded answers: places, sizes, scores, defect types with their probability."""

from __future__ import annotations

from collections.abc import Sequence

from zsad.dialogue.evidence import Evidence, RegionEvidence
from zsad.dialogue.understand.vocabulary import DefectVocabulary


def place(cell: str) -> str:
    return f"the {cell}"


def places(regions: Sequence[RegionEvidence]) -> str:
    """"the top left", "the top left and the center", "the top, the left and the center"."""
    names = [place(c) for c in dict.fromkeys(r.cell for r in regions)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def region_size(region: RegionEvidence) -> str:
    """"small: about 1.2 % of the image (a 12×9 px box at x 3–15, y 4–13)"."""
    x0, y0, x1, y1 = region.bbox
    return (f"{region.size}: about {100 * region.area_fraction:.1f} % of the image "
            f"(a {x1 - x0}×{y1 - y0} px box at x {x0}–{x1}, y {y0}–{y1})")


def region_brief(region: RegionEvidence) -> str:
    """"a small region (1.2 % of the image)"."""
    return f"a {region.size} region ({100 * region.area_fraction:.1f} % of the image)"


def score_clause(ev: Evidence) -> str:
    if ev.score is None:
        return "from the annotated mask"
    if ev.threshold is None:
        return f"score {ev.score:.2f}"
    return f"score {ev.score:.2f}, threshold {ev.threshold:.2f}"


def either(words: Sequence[str]) -> str:
    """"crack", "scratch or crack", "hole, cut or stain"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def typed(vocabulary: DefectVocabulary, ev: Evidence, kind: str) -> str:
    """"a misplaced component (probability 0.11)"; without a probability, the noun phrase alone."""
    prob = ev.type_prob(kind)
    if prob is None and kind == ev.defect_type:
        prob = ev.defect_prob
    return vocabulary.noun(kind) + (f" (probability {prob:.2f})" if prob is not None else "")


def top_type(ev: Evidence) -> str | None:
    """The most likely defect type: the detector's, else the first of the probabilities."""
    if ev.defect_type:
        return ev.defect_type
    return ev.type_probs[0][0] if ev.type_probs else None
