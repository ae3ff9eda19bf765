"""Answers built from the evidence alone: always available, instant, and never more than the detector found.

Each recognised intent gets one or two sentences; a question asking several things gets them in order. A
question it cannot place gets a plain "I can only tell ..." reply listing what it can answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from zsad.dialogue.evidence import Evidence, RegionEvidence
from zsad.dialogue.intents import Intent, recognise

CAN_ONLY_TELL = (
    "I can only tell whether there is a defect, where it is, what type it is, how many regions there are, "
    "how large they are, how confident the detector is, or describe what it found."
)


def _place(cell: str) -> str:
    return "the center" if cell == "center" else f"the {cell}"


def _places(regions: Sequence[RegionEvidence]) -> str:
    cells = list(dict.fromkeys(r.cell for r in regions))
    names = [_place(c) for c in cells]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _region_size(region: RegionEvidence) -> str:
    x0, y0, x1, y1 = region.bbox
    return (f"{region.size}: about {100 * region.area_fraction:.1f} % of the image "
            f"(a {x1 - x0}×{y1 - y0} px box at x {x0}–{x1}, y {y0}–{y1})")


def _score_clause(ev: Evidence) -> str:
    if ev.score is None:
        return "from the annotated mask"
    if ev.threshold is None:
        return f"score {ev.score:.2f}"
    return f"score {ev.score:.2f}, threshold {ev.threshold:.2f}"


class GroundedResponder:
    """Rule-based answers from :class:`Evidence`; implements the responder protocol."""

    name = "grounded"

    def answer(self, question: str, evidence: Evidence, *, image: Image.Image | None = None,
               overlay: Image.Image | None = None, history: Sequence[tuple[str, str]] = ()) -> str:
        intents = recognise(question)
        if not intents:
            return CAN_ONLY_TELL
        if Intent.DESCRIBE in intents:
            return self.describe(evidence)
        if not evidence.anomalous and len(intents) > 1:
            return self.presence(evidence)  # "where and how big?" on a normal image: one plain no, not three
        return " ".join(self._sentence(intent, evidence) for intent in intents)

    # -- one intent each ---------------------------------------------------------------------------
    def _sentence(self, intent: Intent, ev: Evidence) -> str:
        return {
            Intent.PRESENCE: self.presence, Intent.LOCATION: self.location, Intent.TYPE: self.type,
            Intent.COUNT: self.count, Intent.SIZE: self.size, Intent.CONFIDENCE: self.confidence,
            Intent.DESCRIBE: self.describe,
        }[intent](ev)

    @staticmethod
    def presence(ev: Evidence) -> str:
        if not ev.anomalous:
            return f"No, I see no defect: the {ev.class_name} looks normal ({_score_clause(ev)})."
        return f"Yes, the {ev.class_name} looks defective: {ev.confidence} ({_score_clause(ev)})."

    @staticmethod
    def location(ev: Evidence) -> str:
        if not ev.anomalous:
            return "Nowhere: I see no defect."
        if not ev.regions:
            return "The image as a whole looks anomalous, but no region stands out above the threshold."
        if len(ev.regions) == 1:
            return f"The defect is at {_places(ev.regions)} of the image."
        return (f"There are {len(ev.regions)} suspicious regions, at {_places(ev.regions)} of the image; "
                f"the largest is at {_place(ev.regions[0].cell)}.")

    @staticmethod
    def type(ev: Evidence) -> str:
        if not ev.anomalous:
            return "There is no defect, so there is no defect type to name."
        if not ev.defect_type:
            return "The image looks defective, but this detector does not name defect types."
        prob = f" (probability {ev.defect_prob:.2f})" if ev.defect_prob is not None else ""
        return f"It looks like a {ev.defect_type}{prob}."

    @staticmethod
    def count(ev: Evidence) -> str:
        if not ev.anomalous or not ev.regions:
            return "I count no defect region." if not ev.anomalous else \
                "No single region stands out: the anomaly is spread over the image."
        n = len(ev.regions)
        return f"I see {n} defect region{'s' if n != 1 else ''}."

    @staticmethod
    def size(ev: Evidence) -> str:
        if not ev.anomalous:
            return "There is no defect to measure."
        if not ev.regions:
            return "No region stands out above the threshold, so I cannot give a size."
        head = _region_size(ev.regions[0])
        if len(ev.regions) == 1:
            return f"The defect is {head}."
        total = sum(r.area_fraction for r in ev.regions)
        return f"The largest region is {head}; all {len(ev.regions)} regions cover {100 * total:.1f} % of the image."

    @staticmethod
    def confidence(ev: Evidence) -> str:
        if ev.score is None:
            return "This comes from an annotated mask, not from a detector score."
        verdict = "defective" if ev.anomalous else "normal"
        threshold = f" against a threshold of {ev.threshold:.2f}" if ev.threshold is not None else ""
        return f"The anomaly score is {ev.score:.2f}{threshold}: {ev.confidence}, so I call it {verdict}."

    def describe(self, ev: Evidence) -> str:
        if not ev.anomalous:
            return self.presence(ev)
        parts = [self.presence(ev)]
        if ev.defect_type:
            parts.append(self.type(ev))
        if ev.regions:
            parts += [self.location(ev), self.size(ev)]
        return " ".join(parts)
