"""What a question asks: its intents in order, what a yes means, the defect types and the place it is about.

Steps (each table lives in its own module): tokens with contractions spelled out and typos mended
(:mod:`~zsad.dialogue.understand.tokens`); defect-type mentions (:mod:`~zsad.dialogue.understand.vocabulary`);
places (:mod:`~zsad.dialogue.understand.places`); words that say "defective" or "good"
(:mod:`~zsad.dialogue.understand.polarity`); intent phrases (:mod:`~zsad.dialogue.understand.intents`). Then:

* **Presence** (a yes/no or either-or question about a defect, a type or a place) is asked by any such word,
  unless the question is a wh-question ("what colour is the sky?" asks nothing we can answer; "what about the
  top left?" does ask) or another intent comes before the first such word ("how many defects are there?" asks
  how many). "The defect" refers to the defect found ("is the defect small or large?" asks its size); alone it
  still asks whether there is one ("is the damage visible?").
* **Type choice.** Two types joined by "or" in a question without "any" / "there" / "some" ask which one it is
  ("is it a scratch or a crack?"); "any scratches or cracks?" asks whether there is either.
* **"Why"** wins over "describe" ("explain why"). A question about the other parts ("does this defect appear on
  other parts?") asks whether it repeats, not whether there is one. A size word closing the question asks how big ("is the
  damage big?"), not before a noun ("is there a large crack?").
* **Back-references.** "it", a place-meaning "there" ("is there a defect there?", not "is there a defect?") and
  "that one" refer to the last region talked about; :func:`~zsad.dialogue.answer.focus.in_context` resolves them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zsad.dialogue.evidence import RegionEvidence
from zsad.dialogue.understand.intents import INTENT_PHRASES, NOT_A_TYPE_QUESTION_AFTER, SIZE_WORDS, Intent
from zsad.dialogue.understand.places import Area, find_places
from zsad.dialogue.understand.places import table_words as place_words
from zsad.dialogue.understand.polarity import Polarity, Signal, polarity, referring_nouns, word_signals
from zsad.dialogue.understand.polarity import table_words as polarity_words
from zsad.dialogue.understand.tokens import Speller, find_all, tokenize, without_fillers
from zsad.dialogue.understand.vocabulary import DefectVocabulary, Role, TypeMention

WH_WORDS = frozenset({"what", "which", "who", "whom", "whose", "when", "how", "why", "where"})
NOT_EXISTENTIAL_AROUND = frozenset({"is", "are", "was", "were", "be", "n't"})
BACK_REFERENCES = ("it", "that one", "this one", "that region", "that spot", "that area", "the same one")


@dataclass(frozen=True)
class Question:
    """A question as understood. ``polarity`` is set for presence questions only; ``focus`` is the region
    "it" / "there" stands for, once resolved in a conversation."""

    text: str
    intents: tuple[Intent, ...]
    polarity: Polarity | None = None
    types: tuple[str, ...] = ()
    area: Area | None = None
    refers_back: bool = False
    focus: RegionEvidence | None = field(default=None, compare=False)

    @property
    def understood(self) -> bool:
        return bool(self.intents)

    @property
    def yes_no(self) -> bool:
        """A question answered by yes or no (not an either-or one)."""
        return self.polarity in (Polarity.DEFECT, Polarity.GOOD)


def _type_choice(tokens: list[str], mentions: list[TypeMention]) -> bool:
    named = [m for m in mentions if m.role is not Role.ABSENT]
    kinds = list(dict.fromkeys(m.kind for m in named))
    if len(kinds) < 2 or {"any", "there", "some"} & set(tokens):
        return False
    first = named[0]
    second = next(m for m in named if m.kind != first.kind)
    return "or" in tokens[first.end:second.start]


def _refers_back(tokens: list[str]) -> bool:
    if any(find_all(p.split(), tokens) for p in BACK_REFERENCES):
        return True
    for i, token in enumerate(tokens):
        if token == "there":
            before = tokens[i - 1] if i else ""
            after = tokens[i + 1] if i + 1 < len(tokens) else ""
            if before not in NOT_EXISTENTIAL_AROUND and after not in NOT_EXISTENTIAL_AROUND:
                return True
    return False


class QuestionReader:
    """Reads questions against a defect vocabulary (the bundled one by default)."""

    def __init__(self, vocabulary: DefectVocabulary | None = None) -> None:
        self.vocabulary = vocabulary or DefectVocabulary.bundled()
        intent_words = {w for phrases in INTENT_PHRASES.values() for p in phrases for w in p.split()}
        self.speller = Speller(intent_words | polarity_words() | place_words() | self.vocabulary.table_words()
                               | {w for p in BACK_REFERENCES for w in p.split()})
        self._intent_phrases = [(intent, p.split()) for intent, phrases in INTENT_PHRASES.items() for p in phrases]

    def tokens(self, text: str) -> list[str]:
        return without_fillers(self.speller(tokenize(text)))

    def _intent_positions(self, tokens: list[str], claimed: set[int]) -> dict[Intent, int]:
        found: dict[Intent, int] = {}
        for intent, words in self._intent_phrases:
            for start in find_all(words, tokens):
                if claimed.intersection(range(start, start + len(words))):
                    continue  # part of a type's words ("wrong position")
                if intent is Intent.TYPE and words[0] in ("type", "kind", "sort") and start \
                        and tokens[start - 1] in NOT_A_TYPE_QUESTION_AFTER:
                    continue  # "some kind of blemish"
                found[intent] = min(found.get(intent, start), start)
        if tokens and tokens[-1] in SIZE_WORDS and len(tokens) - 1 not in claimed:
            found.setdefault(Intent.SIZE, len(tokens) - 1)
        if Intent.WHY in found:
            found.pop(Intent.DESCRIBE, None)
        return found

    def read(self, text: str) -> Question:
        """The question as understood (module doc); no intents when it asks nothing answerable."""
        tokens = self.tokens(text)
        taken: set[int] = set()
        mentions = self.vocabulary.find(tokens, taken)
        type_tokens = set(taken)
        places = find_places(tokens, taken)
        signals = word_signals(tokens, taken)
        found = self._intent_positions(tokens, type_tokens)
        types = tuple(dict.fromkeys(m.kind for m in mentions))
        if _type_choice(tokens, mentions):
            first = min(m.start for m in mentions)
            found[Intent.TYPE] = min(found.get(Intent.TYPE, first), first)
        else:
            signals += [Signal(m.start, m.end, defect=m.role is Role.PRESENT) for m in mentions
                        if m.role is not Role.TOPIC]
        signals += [Signal(start, end, defect=True, weak=True) for start, end, _ in places]
        signals.sort(key=lambda s: s.start)
        asks_yes_no = not (tokens and tokens[0] in WH_WORDS and tokens[1:2] != ["about"])
        if Intent.REPEAT in found:  # "does this defect appear on other parts?" asks about the batch, not presence
            asks_yes_no = False
        if asks_yes_no and signals:
            first = signals[0].start
            if all(position > first for position in found.values()):
                found[Intent.PRESENCE] = first
        elif asks_yes_no and not found and referring_nouns(tokens):
            found[Intent.PRESENCE] = referring_nouns(tokens)[0]
        intents = tuple(sorted(found, key=lambda i: (found[i], list(Intent).index(i))))
        return Question(
            text=text, intents=intents,
            polarity=polarity(tokens, signals) if Intent.PRESENCE in intents else None,
            types=types, area=places[0][2] if places else None, refers_back=_refers_back(tokens),
        )


def recognise(question: str, reader: QuestionReader | None = None) -> list[Intent]:
    """The intents of ``question`` in order of appearance; empty when none is recognised."""
    return list((reader or QuestionReader()).read(question).intents)
