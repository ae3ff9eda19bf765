"""Instruction dialogues synthesised from (image, mask, defect type), written as JSONL (lvlm.md §4.5).

Each row holds the image and mask paths, class, canonical defect type, the hint given to the model and chat
``messages``: the user turn is an image entry + hint + question, the assistant turn the answer the ground truth
implies. About half the rows are normal images; about 15 % of hints are dropped or corrupted (a flipped verdict
or a wrong cell) while the answer stays true, so the model must look at the image (TGAD, arXiv 2606.01992).
The hint is the one the LVLM gets when answering (:func:`zsad.dialogue.answer.agreement.lvlm_hint`): the evidence, then
its answer to the first question, which is always an "is there a defect?" one (a yes means "defective").
Rows are made from one split of the dataset (the train split by default, every image of named categories) and
keep the paraphrase templates they asked, so an evaluation can show it uses other images and other questions
(:mod:`zsad.dialogue.training.overlap`). The paraphrases and answer wordings are the dialogue tables
(:mod:`zsad.dialogue.tables`); the user turn's text is built as the LVLM responder builds it
(:func:`zsad.dialogue.lvlm.responder.user_text`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zsad.dialogue.answer.agreement import lvlm_hint
from zsad.dialogue.evidence import Evidence, confidence_word, evidence_from_mask
from zsad.dialogue.lvlm.responder import user_text
from zsad.dialogue.tables import INTENTS, DialogueTables, load_dialogue_tables
from zsad.dialogue.understand.intents import Intent
from zsad.dialogue.understand.polarity import Polarity
from zsad.dialogue.understand.questions import Question
from zsad.errors import DatasetError, UsageError
from zsad.fileio import atomic_write_text
from zsad.types import GRID_CELLS

#: Which images of a dataset dialogues are made from.
SPLITS: tuple[str, ...] = ("train", "test", "all")
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six")
#: How the first question of every dialogue ("anomaly" intent) is understood.
ANOMALY_QUESTION = Question("is there a defect?", (Intent.PRESENCE,), Polarity.DEFECT)


def fold_defect_type(name: str | None, vocab: dict[str, Sequence[str]] | None = None) -> str | None:
    """Canonical defect type of a dataset's folder name (``broken_large`` -> ``broken``, ``scuff`` -> ``scratch``):
    a canonical name or synonym contained in the name wins; otherwise the name with ``_`` as spaces."""
    if not name or name.lower() in ("good", "normal", "ok"):
        return None
    if vocab is None:
        from zsad.prompts import load_prompt_bank

        vocab = dict(load_prompt_bank().defects)
    text = name.lower().replace("_", " ").replace("-", " ").strip()
    words = text.split()
    for canonical in vocab:
        if canonical == text or canonical in words:
            return canonical
    for canonical, synonyms in vocab.items():
        if any(s.lower() == text or s.lower() in words for s in synonyms):
            return canonical
    return text


def positions(evidence: Evidence) -> str:
    """The cells of the regions in grid order, joined ("top left and center")."""
    cells = [c for c in GRID_CELLS if c in evidence.cells()]
    return " and ".join(cells) if cells else "center"


def answer_for(intent: str, evidence: Evidence, tables: DialogueTables) -> str:
    """The true answer to one intent, from ground-truth evidence."""
    a = tables.answers
    count = len(evidence.regions)
    if intent == "anomaly":
        if not evidence.anomalous:
            return a["anomaly_no"]
        key = "anomaly_yes" if count <= 1 else "anomaly_yes_many"
        return a[key].format(pos=positions(evidence), count=count)
    if intent == "type":
        if not evidence.anomalous:
            return a["type_none"]
        return a["type_known"].format(type=evidence.defect_type) if evidence.defect_type else a["type_unknown"]
    if intent == "where":
        return a["where"].format(pos=positions(evidence)) if evidence.anomalous else a["where_none"]
    if intent == "count":
        if not evidence.anomalous:
            return a["count_none"]
        word = _NUMBERS[count] if count < len(_NUMBERS) else str(count)
        return a["count"].format(verb="is" if count == 1 else "are", count=word,
                                 noun="defect" if count == 1 else "defects")
    raise UsageError(f"unknown intent {intent!r}; choose one of: {', '.join(INTENTS)}")


def hint_evidence(truth: Evidence, rng: random.Random) -> Evidence:
    """Ground truth dressed as a detector output: a plausible score either side of a 0.5 threshold."""
    threshold = 0.5
    score = rng.uniform(0.55, 0.97) if truth.anomalous else rng.uniform(0.05, 0.45)
    return replace(truth, score=score, threshold=threshold,
                   confidence=confidence_word(score, threshold, truth.anomalous))


def corrupt(evidence: Evidence, rng: random.Random) -> Evidence:
    """A wrong hint: the verdict flipped, or (for a defect) its region moved to another cell."""
    if evidence.anomalous and evidence.regions and rng.random() < 0.5:
        region = evidence.regions[0]
        cell = rng.choice([c for c in GRID_CELLS if c != region.cell])
        return replace(evidence, regions=(replace(region, cell=cell), *evidence.regions[1:]))
    if evidence.anomalous:
        score = rng.uniform(0.05, 0.45)
        return replace(evidence, anomalous=False, score=score, regions=(), defect_type=None,
                       confidence=confidence_word(score, evidence.threshold, False))
    from zsad.dialogue.evidence import RegionEvidence

    score = rng.uniform(0.55, 0.97)
    cell = rng.choice(GRID_CELLS)
    fake = RegionEvidence(cell=cell, size="small", area_fraction=0.01, bbox=(0, 0, 1, 1))
    return replace(evidence, anomalous=True, score=score, regions=(fake,),
                   confidence=confidence_word(score, evidence.threshold, True))


def dialogue_row(image: str, mask: str | None, truth: Evidence, tables: DialogueTables, rng: random.Random, *,
                 hint_noise: float = 0.15, follow_ups: int = 1) -> dict[str, Any]:
    """One training row: an anomaly question first, then ``follow_ups`` other intents, all about one image."""
    evidence = hint_evidence(truth, rng)
    hint_state = "true"
    if rng.random() < hint_noise:
        if rng.random() < 0.5:
            hint_state = "dropped"
        else:
            hint_state, evidence = "corrupted", corrupt(evidence, rng)
    hint = None if hint_state == "dropped" else lvlm_hint(evidence, ANOMALY_QUESTION)
    intents = ["anomaly", *rng.sample(INTENTS[1:], k=min(follow_ups, len(INTENTS) - 1))]
    messages: list[dict[str, Any]] = []
    templates: list[str] = []
    for i, intent in enumerate(intents):
        templates.append(rng.choice(tables.questions[intent]))
        question = templates[-1].format(object=truth.class_name)
        if i == 0:
            content = [{"type": "image"}, {"type": "text", "text": user_text(hint, question)}]
        else:
            content = [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant",
                         "content": [{"type": "text", "text": answer_for(intent, truth, tables)}]})
    return {"image": image, "mask": mask, "class": truth.class_name, "type": truth.defect_type,
            "anomalous": truth.anomalous, "cells": sorted(truth.cells()), "hint": hint, "hint_state": hint_state,
            "intents": intents, "paraphrases": templates, "messages": messages}


def _mask_of(sample: Any) -> np.ndarray:
    from zsad.data.datasets import load_mask

    with Image.open(sample.image_path) as im:
        size = im.size
    if sample.label == 0:
        return np.zeros((size[1], size[0]), dtype=bool)
    if sample.mask_path is None:
        raise DatasetError(f"{sample.image_path}: anomalous image without a mask; dialogues need masks")
    return load_mask(sample.mask_path, size, sample.image_path) > 0


def default_split(categories: Sequence[str] | None) -> str:
    """The split training uses unless told: every image of named categories (evaluation then takes the test split
    of the others), else the train split (evaluation takes the test split)."""
    return "all" if categories else "train"


def _split_samples(dataset: Any, category: str, split: str) -> list[Any]:
    samples = []
    for part in (("test", "train") if split == "all" else (split,)):
        try:
            samples += dataset.samples(category, part)
        except (DatasetError, OSError):  # a layout without this split
            if part == "test":
                raise
    return samples


def synthesise(root: str | Path, *, categories: Sequence[str] | None = None, split: str | None = None,
               normal_fraction: float = 0.5, hint_noise: float = 0.15, follow_ups: int = 1, seed: int = 0,
               tables: DialogueTables | None = None) -> list[dict[str, Any]]:
    """Dialogue rows from every anomalous image (with a mask) of ``split`` ("train", "test" or "all"; default
    :func:`default_split`) plus enough of its normal images for ``normal_fraction`` of the rows."""
    from zsad.data.datasets import open_dataset

    if not 0.0 <= normal_fraction < 1.0 or not 0.0 <= hint_noise <= 1.0:
        raise UsageError("normal_fraction must be in [0, 1) and hint_noise in [0, 1]")
    split = split or default_split(categories)
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    tables = tables or load_dialogue_tables()
    rng = random.Random(seed)
    dataset = open_dataset(root, categories=categories) if categories else open_dataset(root)
    rows: list[dict[str, Any]] = []
    for category in dataset.categories:
        samples = _split_samples(dataset, category, split)
        anomalous = [s for s in samples if s.label == 1 and s.mask_path is not None]
        normal = [s for s in samples if s.label == 0]
        wanted = round(len(anomalous) * normal_fraction / (1.0 - normal_fraction)) if anomalous else len(normal)
        chosen = anomalous + rng.sample(normal, k=min(wanted, len(normal)))
        class_name = category.replace("_", " ")
        for sample in chosen:
            truth = evidence_from_mask(_mask_of(sample), defect_type=fold_defect_type(sample.defect_type),
                                       class_name=class_name, min_area_fraction=0.0005)
            rows.append(dialogue_row(str(sample.image_path), None if sample.mask_path is None else str(sample.mask_path),
                                     truth, tables, rng, hint_noise=hint_noise, follow_ups=follow_ups))
    rng.shuffle(rows)
    return rows


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{number}: not valid JSON ({exc})") from None
    return rows
