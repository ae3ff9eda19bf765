"""What a question can ask, and the phrases that ask it (data; read by :mod:`zsad.dialogue.understand.questions`).

A phrase matches when its words appear consecutively in the question after :mod:`zsad.dialogue.understand.tokens` has
spelled out contractions ("what's" -> "what is") and mended typos. Whether there is a defect (``PRESENCE``) is
not a phrase: it is asked by any word that says "defective" or "good" (:mod:`zsad.dialogue.understand.polarity`), a
defect type or a place, in a yes/no or either-or question.
"""

from __future__ import annotations

from enum import Enum


class Intent(str, Enum):
    PRESENCE = "presence"  # is there a defect (of this type, in this place)? is it good?
    LOCATION = "location"  # where?
    TYPE = "type"  # what kind?
    COUNT = "count"  # how many?
    SIZE = "size"  # how big?
    CONFIDENCE = "confidence"  # how sure?
    DESCRIBE = "describe"  # describe it
    WHY = "why"  # why? how do you know?
    REPEAT = "repeat"  # does this defect appear on other parts of the batch?


INTENT_PHRASES: dict[Intent, tuple[str, ...]] = {
    Intent.LOCATION: (
        "where", "which part", "which area", "which region", "what part", "what region", "location", "located",
        "locate", "position", "which side", "which corner", "in which", "whereabouts", "point to", "point out",
        "show me",
    ),
    Intent.TYPE: (
        "what kind", "what type", "which kind", "which type", "what sort", "which sort", "type of", "kind of",
        "sort of", "what defect", "which defect", "what is wrong", "what went wrong", "what is the problem",
        "what problem", "what anomaly", "what damage", "what flaw", "classify", "classification", "category",
        "what is it", "name the", "defect type", "called",
    ),
    Intent.COUNT: (
        "how many", "number of", "count", "how much defects", "several", "multiple", "more than one",
    ),
    Intent.SIZE: (
        "how big", "how large", "how small", "how wide is", "how wide are", "how long is", "how long are",
        "how deep is", "how deep are", "size", "extent", "dimensions",
        "dimension", "how much of", "how much area", "area of", "what fraction", "what percentage",
        "what proportion", "big is", "large is", "small or", "big or", "large or", "tiny or",
    ),
    Intent.CONFIDENCE: (
        "how sure", "how confident", "confidence", "confident", "certain", "certainty", "how likely",
        "how probable", "probability", "score", "sure", "reliable", "trust", "trustworthy", "rely on",
    ),
    Intent.DESCRIBE: (
        "describe", "description", "explain", "tell me about", "tell me more", "summary", "summarize",
        "summarise", "what do you see", "what can you see", "what did you find", "what was found", "findings",
        "inspection find", "inspection found", "inspection result", "details", "detail", "report", "overview",
        "inspect",
    ),
    Intent.WHY: (
        "why", "how do you know", "how can you tell", "how did you decide", "how did you reach",
        "how did you conclude", "how did you come to", "what makes you", "what made you", "on what basis",
        "based on what", "evidence", "reasoning", "reason", "justify", "justification", "explain your",
        "how come", "what tells you", "what shows",
    ),
    Intent.REPEAT: (
        "other parts", "other part", "other images", "other pieces", "other samples", "other items",
        "other products", "other units", "rest of the batch", "whole batch", "same defect", "same anomaly",
        "same flaw", "same fault", "repeated", "repeating", "repeats", "recurring", "recur", "systematic",
    ),
}

#: A question ending in one of these asks how big ("is the damage big?"); before a noun it does not ("is there a
#: large crack?").
SIZE_WORDS = frozenset({"big", "large", "small", "tiny", "huge", "wide", "long", "deep", "bigger", "larger"})

#: "type of" / "kind of" / "sort of" after one of these words is not a type question ("some kind of blemish").
NOT_A_TYPE_QUESTION_AFTER = frozenset({"some", "any", "a", "an", "every", "no", "this", "that"})
