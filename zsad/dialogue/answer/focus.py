"""Follow-up questions: "it" and "there" stand for the last region talked about in the conversation.

Replaying the earlier questions (not the answers, which may come from a language model) gives that region: a
question about a place sets it to the largest region there (or to none when the place is empty), one that
refers back keeps it, and any other question talks about the image as a whole and clears it. A question that
refers back is then about that region and its cell; a question naming a place is about the largest region
there. Stateless, so every responder resolves a conversation the same way from its history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from zsad.dialogue.answer.verdict import regions_in
from zsad.dialogue.evidence import Evidence, RegionEvidence
from zsad.dialogue.understand.places import cell_area
from zsad.dialogue.understand.questions import Question, QuestionReader


def last_region(reader: QuestionReader, history: Sequence[tuple[str, str]], ev: Evidence) -> RegionEvidence | None:
    """The region the conversation so far last talked about, or None."""
    focus: RegionEvidence | None = None
    for asked, _ in history:
        q = reader.read(asked)
        if q.area is not None:
            inside = regions_in(ev, q.area)
            focus = inside[0] if inside else None
        elif not q.refers_back:
            focus = None
    return focus


def in_context(reader: QuestionReader, text: str, history: Sequence[tuple[str, str]], ev: Evidence) -> Question:
    """``text`` understood as the next question after ``history`` about the image of ``ev``."""
    q = reader.read(text)
    if q.area is not None:
        inside = regions_in(ev, q.area)
        return replace(q, focus=inside[0]) if inside else q
    if q.refers_back:
        focus = last_region(reader, history, ev)
        if focus is not None:
            return replace(q, area=cell_area(focus.cell), focus=focus)
    return q
