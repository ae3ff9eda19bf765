"""How a reply answers a yes/no question: the answer read back into yes, no or neither.

The papers' substring test for "yes"/"no" misreads "not", "normal" and "No defect"; :func:`parse_yes_no` anchors
on the first word, then on a few whole-clause patterns, and returns None when the answer commits to nothing.
Serving holds an LVLM's answer to the evidence with these (:mod:`zsad.dialogue.answer.agreement`); the dialogue
metrics read answers with the same functions (:mod:`zsad.dialogue.training.judge`).
"""

from __future__ import annotations

import re

_NO_WORDS = {"no", "nope", "not", "none", "nothing", "false", "normal", "good", "flawless", "negative", "clean"}
_YES_WORDS = {"yes", "yeah", "yep", "true", "anomalous", "defective", "damaged", "positive", "affirmative"}
_NEGATIVE_CLAUSE = re.compile(
    r"^(?:i (?:do not|don't|cannot|can't) (?:see|find)|there (?:is|are) (?:no|not any|nothing)|"
    r"(?:the |this )?(?:\w+ )?(?:image|object|part|it)?\s*(?:is|looks|appears|seems) "
    r"(?:to be )?(?:normal|fine|ok|okay|good|flawless|defect[- ]free|intact|not (?:defective|anomalous|damaged)))")
_POSITIVE_CLAUSE = re.compile(
    r"^(?:i (?:see|found|can see)|there (?:is|are) (?:an? |some |\d+ |several |two |three )?"
    r"(?:anomal|defect|damage|flaw|scratch|crack|hole)|(?:the |this )?(?:\w+ )?(?:image|object|part|it)?\s*"
    r"(?:is|looks|appears|seems) (?:to be )?(?:defective|anomalous|damaged|broken))")
_FIRST_WORD = re.compile(r"[a-z]+")
_LITERAL_YES = {"yes", "yeah", "yep", "yup"}
_LITERAL_NO = {"no", "nope"}


def parse_yes_no(text: str) -> bool | None:
    """True for an answer that says there is a defect, False for one that says there is none, else None."""
    clean = text.strip().lower().lstrip(" \t\n\"'`*-:>.").replace("’", "'")
    match = _FIRST_WORD.match(clean)
    if match is None:
        return None
    first = match.group(0)
    if first in _NO_WORDS:
        return False
    if first in _YES_WORDS:
        return True
    if _NEGATIVE_CLAUSE.match(clean):
        return False
    if _POSITIVE_CLAUSE.match(clean):
        return True
    return None


def parse_literal_yes_no(text: str) -> bool | None:
    """True / False when an answer opens with "yes" / "no" ("No crack found" is a no), else None: how a yes/no
    question was answered, whatever a yes means for it."""
    match = _FIRST_WORD.match(text.strip().lower().lstrip(" \t\n\"'`*-:>."))
    if match is None:
        return None
    word = match.group(0)
    return True if word in _LITERAL_YES else False if word in _LITERAL_NO else None
