"""The held-out question bank (``evaluation/questions/``): loading it, the images it is asked about, scoring.

Each question is asked about every scenario: a synthetic image with a decision made by
:func:`zsad.decisions.decide` from a planted map, covering a normal image, anomalous ones with one or two regions
in known cells, a detected type that wins clearly, narrowly or weakly (at chance, as in issue 16), decisions
forced with threshold 0 and 1, and a detector that names no types. The expected yes/no comes from the bank's own
annotations (polarity, types, place) and the evidence, through :mod:`zsad.dialogue.answer.verdict`: the recogniser's
reading is not used, so misreading a question costs polarity accuracy.

Metrics:

* ``intent_accuracy``: share of questions whose recognised intents (in order) are the annotated ones; the
  ``reading`` group also gives the share with the annotated polarity, types and place;
* ``polarity_accuracy``: over (yes/no or either-or question, scenario) pairs the evidence decides, the share of
  answers that open with the expected yes/no (either-or: the expected verdict); unparsed answers are wrong;
* ``refusal_accuracy``: over all pairs, the share where the answer is a refusal exactly when the question is
  out of scope (``refused_out_of_scope`` and ``refused_in_scope`` split it);
* with an LVLM, ``model_polarity_accuracy`` (the model's own answers, before the check against the evidence)
  and ``overruled`` (share of checked answers replaced by the grounded one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from zsad.dialogue.answer.agreement import reads_as
from zsad.dialogue.answer.verdict import expected_reply, target_found
from zsad.dialogue.evidence import Evidence, evidence_from_result
from zsad.dialogue.understand.intents import Intent
from zsad.dialogue.understand.places import AREAS
from zsad.dialogue.understand.polarity import Polarity
from zsad.dialogue.understand.questions import QuestionReader
from zsad.errors import UsageError

DEFAULT_BANK = Path(__file__).resolve().parent / "questions" / "heldout.yaml"
REFUSAL_OPENING = "I can only tell"
SIZE = 96


@dataclass(frozen=True)
class BankEntry:
    """One annotated question; ``intents`` is empty for a question that must be refused."""

    question: str
    intents: tuple[str, ...]
    polarity: str | None
    types: tuple[str, ...]
    region: str | None

    @property
    def out_of_scope(self) -> bool:
        return not self.intents


def _names(value: Any) -> tuple[str, ...]:
    return () if value is None else tuple(value) if isinstance(value, list) else (value,)


def load_bank(path: str | Path = DEFAULT_BANK, vocabulary: Sequence[str] | None = None) -> list[BankEntry]:
    """Read and check the bank (fields and names as its header documents)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"question bank {path}: cannot read it ({exc})") from None
    rows = (data or {}).get("questions")
    if not isinstance(rows, list) or not rows:
        raise UsageError(f"question bank {path}: expected a non-empty list under 'questions'")
    intents = {i.value for i in Intent}
    entries = []
    for number, row in enumerate(rows, 1):
        where = f"question bank {path}, entry {number}"
        if not isinstance(row, dict) or not isinstance(row.get("q"), str) or "intent" not in row:
            raise UsageError(f"{where}: needs 'q' (a string) and 'intent'")
        asked = _names(row["intent"])
        asked = () if asked == ("none",) else asked
        polarity, types, region = row.get("polarity"), _names(row.get("type")), row.get("region")
        problems = [f"unknown intent {i!r}" for i in asked if i not in intents]
        if polarity is not None and polarity not in {p.value for p in Polarity}:
            problems.append(f"unknown polarity {polarity!r}")
        if (polarity is not None) != ("presence" in asked):
            problems.append("a polarity goes with the presence intent, and only with it")
        if vocabulary is not None:
            problems += [f"unknown defect type {t!r}" for t in types if t not in vocabulary]
        if region is not None and region not in AREAS:
            problems.append(f"unknown region {region!r} (one of {', '.join(AREAS)})")
        if problems:
            raise UsageError(f"{where} ({row['q']!r}): " + "; ".join(problems))
        entries.append(BankEntry(row["q"], asked, polarity, types, region))
    return entries


@dataclass(frozen=True)
class Scenario:
    """An image and the evidence of a decision about it."""

    name: str
    evidence: Evidence
    image: Image.Image
    overlay: Image.Image


def _probs(kinds: Sequence[str], **chosen: float) -> dict[str, float]:
    """``chosen`` probabilities, the rest shared equally by the other types."""
    rest = [k for k in kinds if k not in chosen]
    share = (1.0 - sum(chosen.values())) / max(1, len(rest))
    return {k: chosen.get(k, share) for k in kinds}


def _block(amap: np.ndarray, cell: tuple[float, float], half: int, value: float) -> None:
    cy, cx = int(cell[1] * amap.shape[0]), int(cell[0] * amap.shape[1])
    amap[max(0, cy - half):cy + half, max(0, cx - half):cx + half] = value


def scenarios(kinds: Sequence[str]) -> list[Scenario]:
    """The images the bank is asked about (module doc); ``kinds``: the defect vocabulary."""
    from zsad.data.synthetic import make_sample
    from zsad.decisions import Thresholds, decide
    from zsad.types import RawOutput
    from zsad.visualize import overlay

    def made(name: str, amap: np.ndarray, score: float, threshold: float, probs: dict[str, float],
             defect: str | None = None, at: tuple[float, float] = (0.5, 0.5)) -> Scenario:
        sample = make_sample("carpet", defect, size=SIZE, rng=np.random.default_rng(len(name)), location=at)
        result = decide(RawOutput(image_score=score, anomaly_map=amap, method="scenario", defect_probs=probs),
                        Thresholds(threshold))
        return Scenario(name, evidence_from_result(result, "carpet"), sample.image,
                        overlay(sample.image, result.anomaly_map, result.pred_mask))

    def blank(level: float = 0.05) -> np.ndarray:
        return np.full((SIZE, SIZE), level, np.float32)

    normal = blank()
    _block(normal, (0.5, 0.5), 8, 0.3)
    hole = blank()
    _block(hole, (0.18, 0.18), 8, 0.9)
    two = blank()
    _block(two, (0.5, 0.5), 14, 0.8)
    _block(two, (0.85, 0.85), 4, 0.7)
    right = blank()
    _block(right, (0.85, 0.5), 6, 0.6)
    low = blank(0.5)
    no_types = blank()
    _block(no_types, (0.18, 0.82), 7, 0.75)
    return [
        made("normal", normal, 0.2, 0.5, _probs(kinds, scratch=0.40, crack=0.25)),
        made("hole-top-left", hole, 0.85, 0.5, _probs(kinds, hole=0.6, crack=0.1), "hole", (0.18, 0.18)),
        made("scratch-center-close-crack", two, 0.8, 0.5, _probs(kinds, scratch=0.40, crack=0.30), "scratch"),
        made("misplaced-right-weak", right, 0.56, 0.5, _probs(kinds, misplaced=0.11, color=0.09), None),
        made("forced-anomalous-threshold-0", low, 0.54, 0.0, _probs(kinds, glue=0.12, fold=0.1)),
        made("forced-normal-threshold-1", hole, 0.9, 1.0, _probs(kinds, crack=0.5)),
        made("no-types-bottom-left", no_types, 0.75, 0.5, {}, "crack", (0.18, 0.82)),
    ]


def expected(entry: BankEntry, ev: Evidence) -> bool | None:
    """The evidence's reply to an annotated yes/no or either-or question (None: not one, or undecidable)."""
    if entry.polarity is None:
        return None
    area = AREAS[entry.region] if entry.region else None
    return expected_reply(Polarity(entry.polarity), target_found(ev, entry.types, area))


def _share(hits: Sequence[bool]) -> float:
    return float(np.mean(hits)) if hits else float("nan")


def reading_metrics(entries: Sequence[BankEntry], reader: QuestionReader) -> tuple[dict[str, Any], list[dict]]:
    """How well questions are understood, independent of any image; and the misread ones."""
    intent_hits, polarity_hits, type_hits, region_hits, misread = [], [], [], [], []
    for entry in entries:
        q = reader.read(entry.question)
        got = tuple(i.value for i in q.intents)
        checks = {"intents": got == entry.intents}
        intent_hits.append(checks["intents"])
        if entry.polarity is not None:
            checks["polarity"] = (q.polarity.value if q.polarity else None) == entry.polarity
            polarity_hits.append(checks["polarity"])
        if not entry.out_of_scope and (entry.types or q.types):
            checks["types"] = sorted(q.types) == sorted(entry.types)
            type_hits.append(checks["types"])
        if not entry.out_of_scope and (entry.region or q.area):
            checks["region"] = (q.area.name if q.area else None) == entry.region
            region_hits.append(checks["region"])
        if not all(checks.values()):
            misread.append({"question": entry.question, "expected": {"intents": list(entry.intents),
                            "polarity": entry.polarity, "types": list(entry.types), "region": entry.region},
                            "read": {"intents": list(got), "polarity": q.polarity.value if q.polarity else None,
                                     "types": list(q.types), "region": q.area.name if q.area else None}})
    metrics = {"n_questions": len(entries), "intent_accuracy": _share(intent_hits),
               "polarity_read_accuracy": _share(polarity_hits), "type_read_accuracy": _share(type_hits),
               "region_read_accuracy": _share(region_hits)}
    return metrics, misread


Answer = Callable[[str, Scenario], tuple[str, str | None]]


def ask_bank(entries: Sequence[BankEntry], cases: Sequence[Scenario], answer: Answer) -> list[dict[str, Any]]:
    """Every question about every scenario: ``answer(question, scenario) -> (answer, model's own or None)``."""
    records = []
    for case in cases:
        for entry in entries:
            text, model_text = answer(entry.question, case)
            records.append({"scenario": case.name, "question": entry.question, "answer": text,
                            "model_answer": model_text, "polarity": entry.polarity,
                            "expected": expected(entry, case.evidence), "out_of_scope": entry.out_of_scope})
    return records


def answer_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Polarity and refusal accuracy of the answers (module doc)."""
    judged = [r for r in records if r["expected"] is not None]
    hits = [reads_as(r["answer"], Polarity(r["polarity"])) == r["expected"] for r in judged]
    refused = [r["answer"].startswith(REFUSAL_OPENING) for r in records]
    out: dict[str, Any] = {
        "n_answers": len(records), "n_polarity_judged": len(judged), "polarity_accuracy": _share(hits),
        "unparsed": _share([reads_as(r["answer"], Polarity(r["polarity"])) is None for r in judged]),
        "refusal_accuracy": _share([f == r["out_of_scope"] for f, r in zip(refused, records)]),
        "refused_out_of_scope": _share([f for f, r in zip(refused, records) if r["out_of_scope"]]),
        "refused_in_scope": _share([f for f, r in zip(refused, records) if not r["out_of_scope"]]),
    }
    asked_model = [r for r in judged if r["model_answer"] is not None]
    if asked_model:
        out["model_polarity_accuracy"] = _share([reads_as(r["model_answer"], Polarity(r["polarity"])) == r["expected"]
                                                 for r in asked_model])
        out["overruled"] = _share([r["answer"] != r["model_answer"] for r in asked_model])
    return out


def wrong_answers(records: Sequence[dict[str, Any]], limit: int = 50) -> list[dict[str, Any]]:
    """Answers whose yes/no is not the evidence's (for the report), at most ``limit``."""
    wrong = [r for r in records if r["expected"] is not None
             and reads_as(r["answer"], Polarity(r["polarity"])) != r["expected"]]
    return wrong[:limit]
