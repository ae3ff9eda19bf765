"""The defect vocabulary as dialogue uses it: noun phrases for answers, words that ask about a type.

Built from the prompt bank (``prompts/defects.yaml``: ``types`` and ``wording``), so a user's ``--prompts``
vocabulary is understood and named the same way as the bundled one. Each type is asked about by its synonyms
(with plurals), its ``words``, its canonical name (unless that is only a ``topic``), its ``topics`` (which
select the type without saying it is there: "is the color correct?") and its ``absent`` phrases (which say it
is not there: "are all parts in place?").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from zsad.dialogue.understand.tokens import find_all
from zsad.prompts import PromptBank, load_prompt_bank


class Role(str, Enum):
    PRESENT = "present"  # says the type is there: "scratched"
    TOPIC = "topic"  # only names it: "the color"
    ABSENT = "absent"  # says it is not there: "in place"


@dataclass(frozen=True)
class TypeMention:
    """Words ``tokens[start:end]`` naming defect type ``kind`` in a ``role``."""

    start: int
    end: int
    kind: str
    role: Role


def _article(word: str) -> str:
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def _plurals(phrase: str) -> tuple[str, ...]:
    if " " in phrase or not phrase.isalpha():
        return (phrase,)
    plural = phrase + ("es" if phrase.endswith(("s", "sh", "ch", "x")) else "s")
    return (phrase, plural)


class DefectVocabulary:
    """Noun phrases and question words per canonical defect type."""

    def __init__(self, bank: PromptBank) -> None:
        self.nouns: dict[str, str] = {}
        phrases: list[tuple[tuple[str, ...], str, Role]] = []
        for kind, synonyms in bank.defects.items():
            wording = bank.defect_wording.get(kind)
            self.nouns[kind] = wording.noun if wording else _article(kind)
            topics = {t.lower() for t in (wording.topics if wording else ())}
            present = {p.lower() for s in synonyms for p in _plurals(s)} | \
                {w.lower() for w in (wording.words if wording else ())}
            if kind.lower() not in topics:
                present |= set(_plurals(kind.lower()))
            for role, group in ((Role.PRESENT, present - topics), (Role.TOPIC, topics),
                                (Role.ABSENT, {a.lower() for a in (wording.absent if wording else ())})):
                phrases += [(tuple(p.replace("-", " ").split()), kind, role) for p in sorted(group)]
        self.phrases = sorted(phrases, key=lambda p: -len(p[0]))  # longest first: "glue residue" before "glue"

    @classmethod
    def bundled(cls) -> DefectVocabulary:
        return cls(load_prompt_bank())

    @property
    def kinds(self) -> list[str]:
        return list(self.nouns)

    def noun(self, kind: str) -> str:
        """"a scratch", "contamination", "a misplaced component"; unknown types get an article."""
        return self.nouns.get(kind) or _article(kind)

    def bare(self, kind: str) -> str:
        """The noun phrase without its article ("No misplaced component found")."""
        noun = self.noun(kind)
        for article in ("a ", "an "):
            if noun.startswith(article):
                return noun[len(article):]
        return noun

    def table_words(self) -> set[str]:
        return {w for words, _, _ in self.phrases for w in words}

    def find(self, tokens: Sequence[str], taken: set[int]) -> list[TypeMention]:
        """Mentions of defect types in ``tokens`` (longest phrases first, not overlapping), in order."""
        found = []
        for words, kind, role in self.phrases:
            for start in find_all(words, tokens):
                span = range(start, start + len(words))
                if not taken.intersection(span):
                    taken.update(span)
                    found.append(TypeMention(start, start + len(words), kind, role))
        return sorted(found, key=lambda m: m.start)
