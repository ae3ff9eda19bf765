"""The LVLM path held to the evidence: what its hint says about the asked question, and what happens when it
disagrees.

* **Hint.** After the evidence (:meth:`Evidence.to_text`), a yes/no or either-or question gets one sentence with
  the answer the evidence implies for *that* question, e.g. for "is it normal?" about a defective part:
  ``Answer: No (the detector found a defect).`` (:mod:`zsad.dialogue.answer.verdict` decides it.)
* **Check.** The model's answer to a yes/no question is kept only when it opens with that yes or no (for an
  either-or question: when it states the same verdict, :func:`~zsad.dialogue.answer.replies.parse_yes_no`). Otherwise
  the user gets the grounded answer, followed by a note quoting what the model said: the detector owns the
  verdict. Other questions are not checked. A question nobody can place is refused without running the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from zsad.dialogue.answer.phrasing import either
from zsad.dialogue.answer.replies import parse_literal_yes_no, parse_yes_no
from zsad.dialogue.answer.verdict import expected_reply, target_found
from zsad.dialogue.evidence import Evidence
from zsad.dialogue.understand.polarity import Polarity
from zsad.dialogue.understand.questions import Question

#: How much of a rejected model answer the note quotes.
QUOTE_CHARS = 120


@dataclass(frozen=True)
class Checked:
    """An answer for the user, what the model said (None: not asked), and whether it agreed (None: unchecked)."""

    text: str
    model_text: str | None = None
    agreed: bool | None = None


def _target(q: Question) -> str:
    what = f"a {either(list(q.types))}" if q.types else "a defect"
    return what + (f" {q.area.where}" if q.area is not None else "")


def answer_hint(q: Question, ev: Evidence) -> str | None:
    """The sentence giving the evidence's answer to ``q``, or None when ``q`` is not yes/no or cannot be told."""
    if q.polarity is None:
        return None
    found = target_found(ev, q.types, q.area)
    reply = expected_reply(q.polarity, found)
    if reply is None:
        return None
    word = ("defective" if reply else "normal") if q.polarity is Polarity.CHOICE else ("Yes" if reply else "No")
    fact = f"the detector found {_target(q)}" if found else f"the detector found no {_target(q)[2:]}"
    return f"Answer: {word} ({fact})."


def lvlm_hint(ev: Evidence, q: Question | None = None) -> str:
    """The text hint an LVLM gets (and is trained with): the evidence, then the answer to a yes/no question."""
    extra = answer_hint(q, ev) if q is not None else None
    return ev.to_text() + (f" {extra}" if extra else "")


def reads_as(text: str, polarity: Polarity) -> bool | None:
    """How an answer replies: yes (True) / no for a yes/no question, defective (True) / normal for an either-or
    one; None when it does neither."""
    return parse_yes_no(text) if polarity is Polarity.CHOICE else parse_literal_yes_no(text)


def check(model_text: str, q: Question, ev: Evidence, grounded_text: str) -> Checked:
    """Keep the model's answer when it agrees with the evidence (module doc); else the grounded one, with a note."""
    if q.polarity is None:
        return Checked(model_text, model_text, None)
    expected = expected_reply(q.polarity, target_found(ev, q.types, q.area))
    if expected is None:
        return Checked(model_text, model_text, None)
    if reads_as(model_text, q.polarity) == expected:
        return Checked(model_text, model_text, True)
    quote = " ".join(model_text.split())
    quote = quote if len(quote) <= QUOTE_CHARS else quote[:QUOTE_CHARS - 1] + "…"
    note = f' (The language model answered "{quote}", which the detector\'s evidence does not support.)'
    return Checked(grounded_text + note, model_text, False)
