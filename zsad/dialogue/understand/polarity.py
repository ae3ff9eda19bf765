"""What a "yes" means in a yes/no question: "is it defective?" (yes = defect) or "is it OK?" (yes = good).

Rules, applied to the question's tokens (:mod:`zsad.dialogue.understand.tokens`):

* **Signals.** Words and phrases that say "defective" (defect, damaged, broken, wrong, reject, fail, a defect
  type ...) or "good" (normal, OK, fine, flawless, acceptable, pass, free of ...). Verbs of acceptance (ship,
  sell, accept, use, keep ...) count only with an object ("ship it"), after "to" / a form of "be" ("ok to ship",
  "can it be sold") or before "or" ("accept or reject"), so "what does the company sell?" says nothing.
  "anything" / "something" and a place are weak signals: they ask "is there a defect?" when nothing else does.
* **Negation.** "not", "no", "without", "nothing", "never", "n't", and "free of" / "X-free" turn a signal
  within the next three words (never across "or" / "and" / "but") into its opposite: "no defects?",
  "not damaged?", "nothing wrong?", "free of scratches?" are good-polarity questions. A negative question
  ("isn't it damaged?", "doesn't this look normal?": "n't" before its subject) means what its positive does.
* **Polarity.** Good and defect signals on both sides of an "or" make an either-or question ("normal or
  defective?"); otherwise the first strong signal decides; with weak signals only, a yes means "defective".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from zsad.dialogue.understand.tokens import NEGATION, find_all


class Polarity(str, Enum):
    DEFECT = "defect"  # a yes means "there is a defect"
    GOOD = "good"  # a yes means "it is good"
    CHOICE = "choice"  # either-or: the answer names the verdict


GOOD_PHRASES: tuple[str, ...] = (
    "normal", "ok", "okay", "fine", "good", "flawless", "perfect", "acceptable", "intact", "clean", "alright",
    "all right", "undamaged", "unblemished", "unharmed", "pristine", "spotless", "faultless", "impeccable",
    "correct", "satisfactory", "nominal", "conforming", "compliant", "in spec", "within spec",
    "within specification", "in tolerance", "within tolerance", "up to standard", "meet", "meets",
    "good enough", "good to go", "pass", "passes", "passed", "passing", "shippable", "usable", "useable",
    "sellable", "deliverable", "approve", "approved", "go to the customer", "go to a customer",
    "go to customers", "go out", "leave the factory", "leave the plant", "correctly", "properly",
)
DEFECT_PHRASES: tuple[str, ...] = (
    "defect", "defects", "defective", "damage", "damaged", "damages", "broken", "break", "faulty", "fault",
    "faults", "anomaly", "anomalies", "anomalous", "abnormal", "abnormality", "abnormalities", "flaw", "flaws",
    "flawed", "problem", "problems", "problematic", "issue", "issues", "wrong", "bad", "imperfect", "imperfection",
    "imperfections", "blemish", "blemishes", "blemished", "irregular", "irregularity", "irregularities",
    "unusual", "odd", "strange", "weird", "suspicious", "fail", "fails", "failed", "failing", "failure", "flag",
    "flagged", "complain", "complaint", "nonconforming", "reject", "rejected", "scrap", "scrapped", "discard",
    "discarded", "rework", "reworked", "out of spec", "out of specification", "out of tolerance", "anything off",
    "something off", "throw away", "throw it away", "throw this away", "send back", "send it back",
    "send this back", "sent back", "return it", "return this", "rust", "rusty", "corroded", "corrosion", "worn",
    "torn", "chipped", "wear", "wear and tear", "nok",
)
WEAK_PHRASES: tuple[str, ...] = ("anything", "something")
#: Acceptance verbs (good) that need an object, a "to" / "be" before them, or an "or" after them.
GOOD_VERBS: tuple[str, ...] = ("ship", "sell", "accept", "use", "keep", "release", "deliver", "shipped", "sold",
                               "accepted", "used", "kept", "released", "delivered")
OBJECTS = frozenset({"it", "this", "that", "these", "those", "them", "the", "one", "my", "our"})
BEFORE_VERB = frozenset({"to", "be", "been", "being", "is", "was", "are", "were"})
#: Generic defect nouns after these words name the defect already found ("is the defect small?"), not a yes/no.
REFERRING = frozenset({"the", "this", "that", "its"})
GENERIC_NOUNS = frozenset({"defect", "defects", "damage", "anomaly", "anomalies", "flaw", "flaws", "problem",
                           "issue", "fault", "blemish", "irregularity"})

NEGATORS = frozenset({"not", "no", "without", "nothing", "never", "non", "none", "neither", NEGATION})
#: A negative question's "n't" stands before its subject ("isn't it ...?") and does not negate.
SUBJECTS = frozenset({"it", "this", "that", "there", "the", "these", "those", "they", "you", "i", "we", "he", "she",
                      "everything", "anything", "something"})
BOUNDARIES = frozenset({"or", "and", "but"})
NEGATION_REACH = 3


def table_words() -> set[str]:
    """Every word of this module's tables (for the speller)."""
    phrases = (*GOOD_PHRASES, *DEFECT_PHRASES, *WEAK_PHRASES, *GOOD_VERBS)
    return {w for p in phrases for w in p.split()} | set(NEGATORS) | {"free", "from", "of", "or"}


@dataclass(frozen=True)
class Signal:
    """Words ``tokens[start:end]`` that say "defective" (``defect``) or "good"; weak ones only ask."""

    start: int
    end: int
    defect: bool
    weak: bool = False


def _claim(tokens: Sequence[str], phrases: Sequence[str], taken: set[int]) -> list[tuple[int, int]]:
    """Non-overlapping matches of ``phrases``, longest first; marks their tokens in ``taken``."""
    spans = []
    for phrase in sorted(phrases, key=lambda p: -len(p.split())):
        words = phrase.split()
        for start in find_all(words, tokens):
            span = range(start, start + len(words))
            if not taken.intersection(span):
                taken.update(span)
                spans.append((start, start + len(words)))
    return spans


def word_signals(tokens: Sequence[str], taken: set[int]) -> list[Signal]:
    """The signals of the generic word tables (type words and places are added by the question reader)."""
    found = [Signal(s, e, defect=True) for s, e in _claim(tokens, DEFECT_PHRASES, taken)]
    found = [s for s in found if not (s.end - s.start == 1 and tokens[s.start] in GENERIC_NOUNS
                                      and s.start > 0 and tokens[s.start - 1] in REFERRING)]
    found += [Signal(s, e, defect=False) for s, e in _claim(tokens, GOOD_PHRASES, taken)]
    for i, token in enumerate(tokens):
        if token in GOOD_VERBS and i not in taken:
            after = tokens[i + 1] if i + 1 < len(tokens) else ""
            before = tokens[i - 1] if i > 0 else ""
            if after in OBJECTS or after == "or" or before in BEFORE_VERB:
                taken.add(i)
                found.append(Signal(i, i + 1, defect=False))
    found += [Signal(s, e, defect=True, weak=True) for s, e in _claim(tokens, WEAK_PHRASES, taken)]
    return sorted(found, key=lambda s: s.start)


def referring_nouns(tokens: Sequence[str]) -> list[int]:
    """Positions of generic defect nouns that refer to the defect found ("the defect")."""
    return [i for i, t in enumerate(tokens) if t in GENERIC_NOUNS and i > 0 and tokens[i - 1] in REFERRING]


def _negates(tokens: Sequence[str], at: int, signal: Signal) -> bool:
    word = tokens[at]
    if word == NEGATION and at + 1 < len(tokens) and tokens[at + 1] in SUBJECTS:
        return False  # "isn't it ...?": a negative question, not a negation
    if not 0 < signal.start - at <= NEGATION_REACH:
        return False
    return not any(t in BOUNDARIES for t in tokens[at + 1:signal.start])


def is_negated(tokens: Sequence[str], signal: Signal) -> bool:
    """Whether an odd number of negations apply to ``signal`` (module doc)."""
    count = sum(_negates(tokens, i, signal) for i, t in enumerate(tokens) if t in NEGATORS)
    if signal.end < len(tokens) and tokens[signal.end] == "free":
        count += 1  # "defect free", "scratch-free"
    for i, token in enumerate(tokens[:signal.start]):
        if token == "free" and i + 1 < len(tokens) and tokens[i + 1] in ("of", "from") \
                and signal.start - i <= NEGATION_REACH + 1:
            count += 1  # "free of defects"
    return count % 2 == 1


def says_defect(tokens: Sequence[str], signal: Signal) -> bool:
    """What the signal says once its negations are applied."""
    return signal.defect != is_negated(tokens, signal)


def polarity(tokens: Sequence[str], signals: Sequence[Signal]) -> Polarity:
    """The polarity of a yes/no question from its signals (module doc)."""
    strong = [(s, says_defect(tokens, s)) for s in signals if not s.weak]
    if not strong:
        return Polarity.DEFECT
    ors = [i for i, t in enumerate(tokens) if t == "or"]
    for (a, a_defect) in strong:
        for (b, b_defect) in strong:
            if a.start < b.start and a_defect != b_defect and any(a.start < i < b.start for i in ors):
                return Polarity.CHOICE
    return Polarity.DEFECT if strong[0][1] else Polarity.GOOD
