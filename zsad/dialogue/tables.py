"""The dialogue tables of ``prompts/dialogue.yaml``: question paraphrases per intent and answer wordings.

Training synthesises its dialogues from them (:mod:`zsad.dialogue.training.instructions`) and the tiny LVLMs build
their word-level vocabulary from them (:mod:`zsad.dialogue.lvlm.tiny.tiny_common`), so they sit below both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from zsad.errors import UsageError

#: The intents a dialogue asks about, each with its own question paraphrases.
INTENTS: tuple[str, ...] = ("anomaly", "type", "where", "count")
_ANSWER_KEYS = ("anomaly_no", "anomaly_yes", "anomaly_yes_many", "type_known", "type_unknown", "type_none",
                "where_none", "where", "count_none", "count")


@dataclass(frozen=True)
class DialogueTables:
    """Question paraphrases per intent and answer wordings, from ``prompts/dialogue.yaml``."""

    questions: dict[str, tuple[str, ...]]
    answers: dict[str, str]

    def all_phrases(self) -> list[str]:
        return [q for qs in self.questions.values() for q in qs] + list(self.answers.values())


def load_dialogue_tables(path: str | Path | None = None) -> DialogueTables:
    """Read and check the paraphrase tables (every intent needs 10+ questions)."""
    from zsad.prompts import prompts_dir

    path = Path(path) if path is not None else prompts_dir() / "dialogue.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: cannot read dialogue tables ({exc})") from None
    questions = (data or {}).get("questions") or {}
    answers = (data or {}).get("answers") or {}
    for intent in INTENTS:
        found = questions.get(intent)
        if not isinstance(found, list) or len(found) < 10 or not all(isinstance(q, str) for q in found):
            raise UsageError(f"{path}: questions.{intent} must be a list of at least 10 strings")
    for key in _ANSWER_KEYS:
        if not isinstance(answers.get(key), str):
            raise UsageError(f"{path}: answers.{key} must be a string")
    return DialogueTables({k: tuple(questions[k]) for k in INTENTS}, {k: answers[k] for k in _ANSWER_KEYS})
