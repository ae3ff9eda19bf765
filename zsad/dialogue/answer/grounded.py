"""Answers built from the evidence alone: always available, instant, and never more than the detector found.

A yes/no question is answered yes or no first, as its polarity asks ("is it normal?" about a defective part:
"No, ..."), then with the evidence; an either-or question with the verdict ("Defective: ..."). Whether the asked
thing is there is decided by :mod:`zsad.dialogue.answer.verdict`. Other intents get one or two sentences each, in the
order asked; on a normal image, several questions about the defect get one plain no. A question about a type the
evidence does not support says so first ("No crack found; ..."). A question it cannot place gets "I can only
tell ...", listing what it can answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from zsad.dialogue.answer.focus import in_context
from zsad.dialogue.answer.phrasing import (
    either,
    place,
    places,
    region_brief,
    region_size,
    score_clause,
    top_type,
    typed,
)
from zsad.dialogue.answer.verdict import place_holds, regions_in, type_supported, types_hold
from zsad.dialogue.evidence import Evidence, RegionEvidence
from zsad.dialogue.understand.intents import Intent
from zsad.dialogue.understand.places import reaches
from zsad.dialogue.understand.polarity import Polarity
from zsad.dialogue.understand.questions import Question, QuestionReader
from zsad.dialogue.understand.vocabulary import DefectVocabulary

CAN_ONLY_TELL = (
    "I can only tell whether there is a defect (of a type, in a place), where it is, what type it is, how many "
    "regions there are, how large they are, how confident the detector is and why, whether it repeats on other "
    "parts, or describe what it found."
)
#: Intents that only ask about a defect; on a normal image, several of them get one "no defect" answer.
ABOUT_THE_DEFECT = (Intent.LOCATION, Intent.TYPE, Intent.COUNT, Intent.SIZE)


def _reply(polarity: Polarity, found: bool, defective: str, normal: str) -> str:
    """The opening word for the polarity, then the fact that holds."""
    if polarity is Polarity.CHOICE:
        return ("Defective: " if found else "Normal: ") + (defective if found else normal)
    yes = found if polarity is Polarity.DEFECT else not found
    return ("Yes, " if yes else "No, ") + (defective if found else normal)


class GroundedResponder:
    """Rule-based answers from :class:`Evidence`; implements the responder protocol."""

    name = "grounded"

    def __init__(self, vocabulary: DefectVocabulary | None = None) -> None:
        self.reader = QuestionReader(vocabulary)
        self.vocabulary = self.reader.vocabulary

    def understand(self, question: str, evidence: Evidence, history: Sequence[tuple[str, str]] = ()) -> Question:
        return in_context(self.reader, question, history, evidence)

    def answer(self, question: str, evidence: Evidence, *, image: Image.Image | None = None,
               overlay: Image.Image | None = None, history: Sequence[tuple[str, str]] = ()) -> str:
        return self.reply(self.understand(question, evidence, history), evidence)

    def reply(self, q: Question, ev: Evidence) -> str:
        """The answer to an understood question."""
        if not q.intents:
            return CAN_ONLY_TELL
        intents = list(q.intents)
        if not ev.anomalous and len(intents) > 1 and any(i in ABOUT_THE_DEFECT for i in intents):
            intents = [i for i in intents if i not in ABOUT_THE_DEFECT] or [Intent.PRESENCE]
            if Intent.PRESENCE not in intents:
                intents.insert(0, Intent.PRESENCE)
        parts = []
        if Intent.PRESENCE not in intents and Intent.TYPE not in intents and q.types:
            parts.append(self.type_note(q, ev))
        parts += [self._sentence(intent, q, ev) for intent in intents]
        return " ".join(p for p in parts if p)

    def _sentence(self, intent: Intent, q: Question, ev: Evidence) -> str:
        return {
            Intent.PRESENCE: self.presence, Intent.LOCATION: self.location, Intent.TYPE: self.type,
            Intent.COUNT: self.count, Intent.SIZE: self.size, Intent.CONFIDENCE: self.confidence,
            Intent.DESCRIBE: self.describe, Intent.WHY: self.why, Intent.REPEAT: self.repeat,
        }[intent](q, ev)

    # -- is there (a defect / this type / something in this place)? -------------------------------------------
    def presence(self, q: Question, ev: Evidence) -> str:
        pol = q.polarity or Polarity.DEFECT
        cls = ev.class_name
        if not ev.anomalous:
            what = either([self.vocabulary.bare(k) for k in q.types]) if q.types else "defect"
            where = f" {q.area.where} or anywhere else" if q.area is not None else ""
            if pol is Polarity.CHOICE:
                return f"Normal: I see no {what}{where} ({score_clause(ev)})."
            if pol is Polarity.GOOD and not q.types and q.area is None:
                return f"Yes, the {cls} looks normal: I see no defect ({score_clause(ev)})."
            return _reply(pol, False, "", f"I see no {what}{where}: the {cls} looks normal ({score_clause(ev)}).")
        type_held = types_hold(ev, q.types) if q.types else True
        place_held = place_holds(ev, q.area) if q.area is not None else True
        if place_held is False:  # one part missing decides, whatever the other
            return self._place_empty(q, ev, pol)
        if type_held is False:
            return self._type_absent(q, ev, pol)
        if type_held is None:
            return (f"I cannot tell whether it is {either([self.vocabulary.noun(k) for k in q.types])}: this "
                    f"detector names no defect types. {self._defective(ev)}")
        if place_held is None:
            return (f"I cannot tell {q.area.where}: the {cls} looks anomalous as a whole ({ev.confidence}), "
                    f"but no region stands out above the threshold.")
        if q.area is not None:
            return self._place_found(q, ev, pol)
        if q.types:
            return _reply(pol, True, self._type_found(q, ev), "")
        if pol is Polarity.CHOICE:
            return f"Defective: {self._suspicion(ev)}."
        return _reply(pol, True, f"the {cls} looks defective: {self._suspicion(ev)}.", "")

    @staticmethod
    def _suspicion(ev: Evidence) -> str:
        """"moderately suspicious (score 0.80, threshold 0.50), at the top left"."""
        where = f", at {places(ev.regions)}" if ev.regions else ""
        return f"{ev.confidence} ({score_clause(ev)}){where}"

    def _defective(self, ev: Evidence) -> str:
        return f"The {ev.class_name} looks defective: {self._suspicion(ev)}."

    def _best_asked(self, q: Question, ev: Evidence) -> str:
        supported = [k for k in q.types if type_supported(ev, k)]
        return max(supported, key=lambda k: (k == ev.defect_type, ev.type_prob(k) or 0.0))

    def _type_found(self, q: Question, ev: Evidence) -> str:
        kind = self._best_asked(q, ev)
        where = f", at {places(ev.regions)}" if ev.regions else ""
        if kind == top_type(ev):
            return f"there is {typed(self.vocabulary, ev, kind)}: the most likely defect type{where}."
        top = top_type(ev)
        return (f"possibly {typed(self.vocabulary, ev, kind)}: close to the most likely type, "
                f"{typed(self.vocabulary, ev, top)}{where}.")

    def _looks_more_like(self, ev: Evidence) -> str:
        top = top_type(ev)
        likeness = f"looks more like {typed(self.vocabulary, ev, top)}" if top else "looks defective"
        if ev.regions:
            return f"the anomalous region at {place(ev.regions[0].cell)} {likeness}"
        return f"the {ev.class_name} {likeness}"

    def _type_absent(self, q: Question, ev: Evidence, pol: Polarity) -> str:
        what = either([self.vocabulary.bare(k) for k in q.types])
        if pol is Polarity.GOOD:
            return f"Yes, no {what} found, but the {ev.class_name} does look defective: {self._looks_more_like(ev)}."
        if pol is Polarity.CHOICE:
            return f"Defective, but no {what} found: {self._looks_more_like(ev)}."
        return f"No {what} found; {self._looks_more_like(ev)}."

    def _place_found(self, q: Question, ev: Evidence, pol: Polarity) -> str:
        inside = regions_in(ev, q.area)
        kind = f", likely {typed(self.vocabulary, ev, self._best_asked(q, ev) if q.types else top_type(ev))}" \
            if (q.types or top_type(ev)) else ""
        if len(inside) == 1:
            fact = f"there is a defect {q.area.where}: {region_brief(inside[0])}{kind}."
        else:
            fact = (f"there are {len(inside)} suspicious regions {q.area.where}, the largest "
                    f"{region_brief(inside[0])}{kind}.")
        return _reply(pol, True, fact, "")

    def _place_empty(self, q: Question, ev: Evidence, pol: Polarity) -> str:
        into = [r for r in ev.regions if reaches(r.bbox, q.area, ev.image_size)]
        spill = f"; the region at {place(into[0].cell)} reaches into {q.area.label}" if into else ""
        elsewhere = f"the defect is at {places(ev.regions)}{spill}"
        if pol is Polarity.GOOD:
            return f"Yes, {q.area.label} looks fine: {elsewhere}."
        if pol is Polarity.CHOICE:
            return f"Normal {q.area.where}: {elsewhere}."
        return f"No, nothing {q.area.where}: {elsewhere}."

    def type_note(self, q: Question, ev: Evidence) -> str:
        """Before another answer about an asked type the evidence does not support: "No crack found; ..."."""
        if not ev.anomalous or types_hold(ev, q.types) is not False:
            return ""
        return f"No {either([self.vocabulary.bare(k) for k in q.types])} found; {self._looks_more_like(ev)}."

    # -- where, what, how many, how big, how sure, why, describe -------------------------------------------------
    def location(self, q: Question, ev: Evidence) -> str:
        if not ev.anomalous:
            return "Nowhere: I see no defect."
        if not ev.regions:
            return "The image as a whole looks anomalous, but no region stands out above the threshold."
        if q.focus is not None:
            others = len(ev.regions) - 1
            more = f" ({others} other region{'s' if others != 1 else ''}: at {places(ev.regions[1:])})" \
                if q.refers_back and others and q.focus is ev.regions[0] else ""
            return f"It is at {place(q.focus.cell)} of the image{more}."
        if len(ev.regions) == 1:
            return f"The defect is at {places(ev.regions)} of the image."
        return (f"There are {len(ev.regions)} suspicious regions, at {places(ev.regions)} of the image; "
                f"the largest is at {place(ev.regions[0].cell)}.")

    def type(self, q: Question, ev: Evidence) -> str:
        if not ev.anomalous:
            return "There is no defect, so there is no defect type to name."
        top = top_type(ev)
        if top is None:
            return "The image looks defective, but this detector does not name defect types."
        if q.types and top not in q.types:
            supported = [k for k in q.types if type_supported(ev, k)]
            if supported:
                best = self._best_asked(q, ev)
                return (f"Of those, it looks most like {typed(self.vocabulary, ev, best)}; the most likely type "
                        f"overall is {typed(self.vocabulary, ev, top)}.")
            head = "Neither" if len(q.types) > 1 else f"No {self.vocabulary.bare(q.types[0])} found"
            return f"{head}: it looks like {typed(self.vocabulary, ev, top)}."
        sentence = f"It looks like {typed(self.vocabulary, ev, top)}"
        prob = ev.type_prob(top)
        if prob is not None and ev.type_probs and prob < 2.0 / len(ev.type_probs):
            sentence += f", a weak guess among {len(ev.type_probs)} types"
        return sentence + "."

    def count(self, q: Question, ev: Evidence) -> str:
        if not ev.anomalous:
            return "I count no defect region."
        if not ev.regions:
            return "No single region stands out: the anomaly is spread over the image."
        if q.area is not None and not q.refers_back:
            n = len(regions_in(ev, q.area))
            return f"I see {n} defect region{'s' if n != 1 else ''} {q.area.where} ({len(ev.regions)} in all)."
        n = len(ev.regions)
        return f"I see {n} defect region{'s' if n != 1 else ''}."

    def size(self, q: Question, ev: Evidence) -> str:
        if not ev.anomalous:
            return "There is no defect to measure."
        if not ev.regions:
            return "No region stands out above the threshold, so I cannot give a size."
        if q.focus is not None:
            return f"The region at {place(q.focus.cell)} is {region_size(q.focus)}."
        head = region_size(ev.regions[0])
        if len(ev.regions) == 1:
            return f"The defect is {head}."
        total = sum(r.area_fraction for r in ev.regions)
        return f"The largest region is {head}; all {len(ev.regions)} regions cover {100 * total:.1f} % of the image."

    def confidence(self, q: Question, ev: Evidence) -> str:
        if ev.score is None:
            return "This comes from an annotated mask, not from a detector score."
        verdict = "defective" if ev.anomalous else "normal"
        threshold = f" against a threshold of {ev.threshold:.2f}" if ev.threshold is not None else ""
        sentence = f"The anomaly score is {ev.score:.2f}{threshold}: {ev.confidence}, so I call it {verdict}."
        asked = [k for k in q.types if ev.type_prob(k) is not None]
        if asked:
            sentence += " Type probabilities: " + ", ".join(f"{k} {ev.type_prob(k):.2f}" for k in asked) + "."
        return sentence

    def why(self, q: Question, ev: Evidence) -> str:
        if ev.score is None:
            if not ev.anomalous:
                return "Because the annotated mask marks no defect."
            return f"Because the annotated mask marks {len(ev.regions)} region(s), at {places(ev.regions)}."
        threshold = f"{ev.threshold:.2f}" if ev.threshold is not None else "?"
        if not ev.anomalous:
            peak = f"; the hottest point of the anomaly map is {ev.map_peak:.2f}" if ev.map_peak is not None else ""
            return f"Because the anomaly score {ev.score:.2f} is below the threshold {threshold}{peak}."
        sentence = f"Because the anomaly score {ev.score:.2f} is at or above the threshold {threshold} ({ev.confidence})"
        hottest = self._hottest(q, ev)
        if hottest is not None:
            peak = f" with a peak of {hottest.peak_score:.2f}" if hottest.peak_score is not None else ""
            sentence += f"; the hottest region is at {place(hottest.cell)} ({hottest.size}, " \
                        f"{100 * hottest.area_fraction:.1f} % of the image){peak}"
        else:
            sentence += "; no single region reaches the threshold: the image as a whole scores high"
        top = top_type(ev)
        if top:
            sentence += f"; its most likely type is {typed(self.vocabulary, ev, top)}"
        return sentence + "."

    @staticmethod
    def _hottest(q: Question, ev: Evidence) -> RegionEvidence | None:
        if q.focus is not None:
            return q.focus
        if not ev.regions:
            return None
        return max(ev.regions, key=lambda r: (r.peak_score if r.peak_score is not None else r.area_fraction))

    def repeat(self, q: Question, ev: Evidence) -> str:
        """Does this defect appear on other parts? From the batch it was scored with (musc/auto find anomalies
        repeated on several images)."""
        batch = ev.batch
        if batch is None:
            return ("I cannot tell: this image was not compared with other parts. Score it together with them "
                    "(zsad score FOLDER with musc or auto, or zsad ask IMAGE ... --batch FOLDER) and ask again.")
        others = batch.images - 1
        if batch.shared > 1:
            at = f" at {place(batch.place)}" if batch.place else ""
            pattern = f" (pattern {batch.pattern})" if batch.pattern else ""
            return (f"Yes: the same anomaly{at} appears on {batch.shared - 1} other image"
                    f"{'s' if batch.shared != 2 else ''} of the {batch.images} scored together{pattern}. A defect "
                    f"repeated on many parts points to a systematic cause (a tool, a fixture).")
        if not ev.anomalous:
            return (f"No: I see no defect here, and no anomaly repeated on it and the other {others} image"
                    f"{'s' if others != 1 else ''} scored with it.")
        return (f"No: none of the other {others} image{'s' if others != 1 else ''} scored with it shares this "
                f"anomaly; it looks like a one-off.")

    def describe(self, q: Question, ev: Evidence) -> str:
        if not ev.anomalous:
            return f"I see no defect: the {ev.class_name} looks normal ({score_clause(ev)})."
        parts = [self._defective(ev)]
        if top_type(ev):
            parts.append(self.type(Question(q.text, (Intent.TYPE,)), ev))
        if q.area is not None and not q.refers_back:
            inside = regions_in(ev, q.area)
            if not inside:
                return " ".join([*parts, f"Nothing stands out {q.area.where}."])
            parts.append(f"{q.area.where.capitalize()}: {len(inside)} region{'s' if len(inside) != 1 else ''}, "
                         f"the largest {region_size(inside[0])}.")
        elif ev.regions:
            whole = Question(q.text, (Intent.LOCATION,), focus=q.focus)
            parts += [self.location(whole, ev), self.size(whole, ev)]
        return " ".join(parts)
