"""Whether what a question asks about is there, by the evidence: the one place a yes or a no is decided.

The grounded answers, the hint and the check of the LVLM path, and the held-out evaluation's expected answers
all call these rules:

* **A defect type** is supported, for an image the detector calls anomalous, when it is the detector's type or
  when its own probability is at least half the most likely type's and at least twice chance (2/K over K
  types): the runner-up of a close race counts, a type at chance level does not. Mask evidence names one type
  and no probabilities: only that type is supported. With no type information at all: unknown (None).
* **A place** holds a defect when a region's centroid cell is in it (:mod:`zsad.dialogue.understand.places`). An image
  called anomalous with no region above the threshold: unknown.
* **The target** (a defect; of one of the asked types; in the asked place) is found when the image is
  anomalous and each asked part holds; a normal image has none.
* **The answer** to a yes/no question is yes when the target is found and a yes means "defective", or when it
  is not found and a yes means "good"; an either-or question is answered with the verdict (True: defective).
"""

from __future__ import annotations

from collections.abc import Sequence

from zsad.dialogue.evidence import Evidence, RegionEvidence
from zsad.dialogue.understand.places import Area
from zsad.dialogue.understand.polarity import Polarity

TYPE_SUPPORT_RATIO = 0.5
TYPE_SUPPORT_OVER_CHANCE = 2.0


def type_supported(ev: Evidence, kind: str) -> bool | None:
    """Whether the evidence supports defect type ``kind`` (module doc)."""
    if not ev.anomalous:
        return False
    if ev.defect_type == kind:
        return True
    if not ev.type_probs:
        return None if ev.defect_type is None else False
    prob = ev.type_prob(kind)
    top = ev.type_probs[0][1]
    chance = 1.0 / len(ev.type_probs)
    return prob is not None and prob >= TYPE_SUPPORT_RATIO * top and prob >= TYPE_SUPPORT_OVER_CHANCE * chance


def regions_in(ev: Evidence, area: Area) -> list[RegionEvidence]:
    """The regions whose centroid cell is in ``area``, largest first."""
    return [r for r in ev.regions if r.cell in area.cells]


def place_holds(ev: Evidence, area: Area) -> bool | None:
    if not ev.anomalous:
        return False
    if not ev.regions:
        return None
    return bool(regions_in(ev, area))


def types_hold(ev: Evidence, kinds: Sequence[str]) -> bool | None:
    """Any of ``kinds`` supported: True; none, with each one decided: False; otherwise None."""
    if not ev.anomalous:
        return False
    answers = [type_supported(ev, k) for k in kinds]
    if any(a is True for a in answers):
        return True
    return None if any(a is None for a in answers) else False


def target_found(ev: Evidence, kinds: Sequence[str] = (), area: Area | None = None) -> bool | None:
    """Whether the asked target is there (module doc); None when the evidence cannot tell."""
    if not ev.anomalous:
        return False
    parts = [types_hold(ev, kinds) if kinds else True, place_holds(ev, area) if area is not None else True]
    if False in parts:
        return False
    return None if None in parts else True


def expected_reply(polarity: Polarity, found: bool | None) -> bool | None:
    """For a yes/no question, whether the answer is "yes"; for an either-or one, whether it is "defective"."""
    if found is None:
        return None
    return (not found) if polarity is Polarity.GOOD else found
