"""What a question asks, recognised from keywords and paraphrases, tolerant of case and small typos.

The table :data:`INTENT_PHRASES` is data: each intent lists phrases; a phrase matches when its words appear
consecutively in the question, each word equal to the question's word or, for words of 4+ letters, within a
small edit distance (same first letter, length within 2, ``difflib`` ratio >= 0.8: "wher" / "defcet" / "lareg"
still match, "there" is not "where"). A question can ask several things ("where is it and how big?"); intents
come back in the order they appear in the question. Words that only hint at a defect ("damaged?", "defect?",
:data:`PRESENCE_HINTS`) count as "is there a defect?" only when nothing more specific was asked, so "what type
of damage" is a type question, not also a yes/no one; and a yes/no phrase after another question ("how many
are there") is part of it.
"""

from __future__ import annotations

import difflib
import re
from enum import Enum


class Intent(str, Enum):
    PRESENCE = "presence"  # is there a defect?
    LOCATION = "location"  # where?
    TYPE = "type"  # what kind?
    COUNT = "count"  # how many?
    SIZE = "size"  # how big?
    CONFIDENCE = "confidence"  # how sure?
    DESCRIBE = "describe"  # describe it


INTENT_PHRASES: dict[Intent, tuple[str, ...]] = {
    Intent.PRESENCE: (
        "is there", "are there", "is it defective", "defective", "any defect", "any defects", "any anomaly",
        "any anomalies", "any damage", "any problem", "any issue", "anything wrong", "something wrong",
        "is it ok", "is this ok", "is it okay", "is it fine", "is it good", "is it normal", "is this normal",
        "is it damaged", "is it broken", "is it faulty", "good or bad", "pass or fail", "ok or not", "does it have",
        "has it got", "does this have", "is it flawless", "is it perfect", "should i reject", "reject it",
        "accept it", "is it anomalous", "is the part", "is the object",
    ),
    Intent.LOCATION: (
        "where", "which part", "which area", "what part", "location", "located", "locate", "position",
        "which side", "which corner", "whereabouts", "point to", "show me",
    ),
    Intent.TYPE: (
        "what kind", "what type", "which kind", "which type", "what sort", "type of", "kind of",
        "what defect", "which defect", "what is wrong", "what's wrong", "whats wrong", "what is the problem",
        "what problem", "what anomaly", "what damage", "classify", "category", "what is it", "name the",
    ),
    Intent.COUNT: (
        "how many", "number of", "count", "how much defects", "several", "multiple", "more than one",
    ),
    Intent.SIZE: (
        "how big", "how large", "how small", "how wide", "how long", "size", "area", "extent", "dimensions",
        "how much of", "what fraction", "what percentage", "big is", "large is",
    ),
    Intent.CONFIDENCE: (
        "how sure", "how confident", "confidence", "confident", "certain", "certainty", "how likely",
        "probability", "score", "sure", "reliable",
    ),
    Intent.DESCRIBE: (
        "describe", "description", "explain", "tell me about", "tell me more", "summary", "summarize",
        "summarise", "what do you see", "details", "detail", "report", "overview", "inspect",
    ),
}

#: Words that ask "is there a defect?" when nothing more specific is recognised.
PRESENCE_HINTS: tuple[str, ...] = (
    "defect", "defects", "defective", "damage", "damaged", "faulty", "fault", "anomaly", "anomalies", "anomalous",
    "flaw", "flaws", "flawless", "broken", "problem", "wrong", "ok", "okay", "normal", "good", "bad", "reject",
)

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("’", "'"))


def _same(expected: str, seen: str) -> bool:
    if expected == seen:
        return True
    if len(expected) < 4 or len(seen) < 4 or expected[0] != seen[0] or abs(len(expected) - len(seen)) > 2:
        return False
    return difflib.SequenceMatcher(None, expected, seen).ratio() >= 0.8


def _find(phrase: list[str], tokens: list[str]) -> int | None:
    """Index of the first place ``phrase`` matches in ``tokens``, or None."""
    n = len(phrase)
    for start in range(len(tokens) - n + 1):
        if all(_same(p, t) for p, t in zip(phrase, tokens[start:start + n])):
            return start
    return None


def recognise(question: str) -> list[Intent]:
    """The intents of ``question`` in order of appearance; empty when none is recognised."""
    tokens = words(question)
    found: dict[Intent, int] = {}
    for intent, phrases in INTENT_PHRASES.items():
        positions = [p for p in (_find(words(phrase), tokens) for phrase in phrases) if p is not None]
        if positions:
            found[intent] = min(positions)
    if not found and any(_find([hint], tokens) is not None for hint in PRESENCE_HINTS):
        found[Intent.PRESENCE] = 0
    if Intent.PRESENCE in found and min(found.values()) < found[Intent.PRESENCE]:
        del found[Intent.PRESENCE]  # "how many defects are there": the yes/no phrase only closes another question
    return sorted(found, key=lambda intent: (found[intent], list(Intent).index(intent)))
