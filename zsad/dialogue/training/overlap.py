"""Keeping dialogue training and evaluation apart: image files by content hash, questions by normalised text.

``zsad train-dialogue`` writes what it trained on into the adapter folder (:data:`RECORD_NAME`): the sha256 of
every image file of its dialogues, the question paraphrases it asked (templates as written in
``prompts/dialogue.yaml``, ``{object}`` standing for any class name of 1-3 words; or the questions of a given ``.jsonl``), and
the data, split and categories it chose. ``evaluation/eval_dialogue.py`` compares its own images and questions with
that record (:func:`find_overlap`), so a score on images or questions the model was trained on is caught even when
the files were copied or renamed, or a paraphrase was asked about another object.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsad.errors import DatasetError

RECORD_NAME = "training_data.json"
RECORD_FORMAT = 1
_PLACEHOLDER = "{object}"
_EXAMPLES = 5


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def normalise_question(text: str) -> str:
    """Lower case, words and numbers only, single spaces: "Is there a Defect ?" -> "is there a defect"."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _pattern(question: str) -> re.Pattern[str]:
    """A question or template as a pattern over normalised text; ``{object}`` matches a class name of one to
    three words ("bottle", "metal nut", "pipe fryum")."""
    text = normalise_question(question.replace(_PLACEHOLDER, " qqobjectqq "))
    return re.compile(re.escape(text).replace("qqobjectqq", r"[a-z0-9]+(?: [a-z0-9]+){0,2}"))


def asked_question(text: str) -> str:
    """The question of a user turn's text, without the detector hint before it
    (:func:`zsad.dialogue.lvlm.responder.user_text`)."""
    return text.strip().splitlines()[-1].strip() if text.strip() else ""


def row_questions(row: dict[str, Any]) -> list[str]:
    """The paraphrase templates a synthesised row asked, or the questions of a row from any other ``.jsonl``."""
    templates = row.get("paraphrases")
    if isinstance(templates, list) and templates:
        return [str(t) for t in templates]
    found = []
    for message in row.get("messages", []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        texts = [content] if isinstance(content, str) else [c.get("text", "") for c in content or []
                                                             if c.get("type") == "text"]
        found += [asked_question(t) for t in texts if asked_question(t)]
    return found


@dataclass(frozen=True)
class TrainingRecord:
    """What one training run used; ``categories`` is None when no categories were named."""

    data: str
    split: str | None
    categories: tuple[str, ...] | None
    image_sha256: frozenset[str]
    questions: tuple[str, ...]
    dialogues: int = 0
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"format": RECORD_FORMAT, "data": self.data, "split": self.split,
                "categories": None if self.categories is None else list(self.categories),
                "dialogues": self.dialogues, "image_sha256": sorted(self.image_sha256),
                "questions": list(self.questions)}

    def summary(self) -> dict[str, Any]:
        """The small part that goes into ``adapter.json``."""
        return {"file": RECORD_NAME, "data": self.data, "split": self.split,
                "categories": None if self.categories is None else list(self.categories),
                "dialogues": self.dialogues, "images": len(self.image_sha256), "questions": len(self.questions)}


def record_from_rows(rows: Sequence[dict[str, Any]], *, data: str, split: str | None,
                     categories: Sequence[str] | None) -> TrainingRecord:
    """Hash every image of ``rows`` and collect their questions."""
    hashes = {file_sha256(path) for path in dict.fromkeys(str(r["image"]) for r in rows if r.get("image"))}
    questions = dict.fromkeys(q for r in rows for q in row_questions(r))
    return TrainingRecord(data=data, split=split, categories=None if categories is None else tuple(categories),
                          image_sha256=frozenset(hashes), questions=tuple(questions), dialogues=len(rows))


def write_record(record: TrainingRecord, folder: str | Path) -> Path:
    from zsad.fileio import atomic_write_text

    path = Path(folder) / RECORD_NAME
    atomic_write_text(path, json.dumps(record.to_json(), indent=1) + "\n")
    return path


def read_record(path: str | Path) -> TrainingRecord | None:
    """The record of an adapter folder (its :data:`RECORD_NAME`, else its ``dialogues.jsonl``), of a record file,
    or of a dialogues ``.jsonl``; None when ``path`` is a folder that holds neither."""
    path = Path(path)
    if path.is_dir():
        if (path / RECORD_NAME).is_file():
            return read_record(path / RECORD_NAME)
        if (path / "dialogues.jsonl").is_file():
            return read_record(path / "dialogues.jsonl")
        return None
    if path.suffix == ".jsonl":
        from zsad.dialogue.training.instructions import read_jsonl

        rows = read_jsonl(path)
        missing = [r["image"] for r in rows if r.get("image") and not Path(r["image"]).is_file()]
        if missing:
            raise DatasetError(f"{path}: {len(missing)} image files of its dialogues are gone (e.g. {missing[0]}); "
                               "their hashes cannot be compared")
        record = record_from_rows(rows, data=str(path), split=None, categories=None)
        return TrainingRecord(**{**record.__dict__, "source": str(path)})
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        categories = raw.get("categories")
        return TrainingRecord(data=str(raw["data"]), split=raw.get("split"),
                              categories=None if categories is None else tuple(categories),
                              image_sha256=frozenset(raw["image_sha256"]), questions=tuple(raw["questions"]),
                              dialogues=int(raw.get("dialogues", 0)), source=str(path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path}: not a training record ({exc})") from None


@dataclass(frozen=True)
class Overlap:
    """How much of an evaluation the training run already saw."""

    checked: bool
    images: int = 0
    questions: int = 0
    eval_images: int = 0
    eval_questions: int = 0
    record: str = ""
    image_examples: tuple[str, ...] = field(default=())
    question_examples: tuple[str, ...] = field(default=())
    reason: str = ""

    @property
    def found(self) -> bool:
        return self.images > 0 or self.questions > 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"checked": self.checked}
        if not self.checked:
            return {**out, "reason": self.reason}
        return {**out, "record": self.record, "images": self.images, "eval_images": self.eval_images,
                "questions": self.questions, "eval_questions": self.eval_questions,
                "image_examples": list(self.image_examples), "question_examples": list(self.question_examples)}

    def message(self) -> str:
        """One line naming what overlaps."""
        parts = []
        if self.images:
            parts.append(f"{self.images} of {self.eval_images} evaluation images have the bytes of a training image "
                         f"(e.g. {self.image_examples[0]})")
        if self.questions:
            parts.append(f"{self.questions} of {self.eval_questions} evaluation questions are training paraphrases "
                         f"(e.g. {self.question_examples[0]!r})")
        return f"evaluation overlaps the training data of {self.record}: " + "; ".join(parts)


def unchecked(reason: str) -> Overlap:
    return Overlap(checked=False, reason=reason)


def matches_any(question: str, trained: Iterable[str]) -> bool:
    """Whether ``question`` is one of the ``trained`` questions or templates, after normalisation."""
    text = normalise_question(question)
    return any(_pattern(t).fullmatch(text) for t in trained)


def find_overlap(record: TrainingRecord, images: Sequence[str | Path], questions: Sequence[str]) -> Overlap:
    """Evaluation ``images`` whose bytes the record holds and evaluation ``questions`` it asked."""
    patterns = [_pattern(t) for t in dict.fromkeys(record.questions)]
    unique_images = list(dict.fromkeys(str(p) for p in images))
    same_images = [p for p in unique_images if file_sha256(p) in record.image_sha256]
    unique_questions = list(dict.fromkeys(questions))
    same_questions = [q for q in unique_questions
                      if any(p.fullmatch(normalise_question(q)) for p in patterns)]
    return Overlap(checked=True, images=len(same_images), questions=len(same_questions),
                   eval_images=len(unique_images), eval_questions=len(unique_questions),
                   record=record.source or record.data, image_examples=tuple(same_images[:_EXAMPLES]),
                   question_examples=tuple(same_questions[:_EXAMPLES]))
