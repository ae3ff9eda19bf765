"""The held-out question bank: its evaluation runs and writes its numbers, the grounded responder's yes/no always
matches the evidence on it, and the scoring notices answers that do not."""

import json
import sys
from pathlib import Path

import pytest

from zsad.errors import UsageError

EVALUATION = Path(__file__).resolve().parents[1] / "evaluation"


@pytest.fixture(scope="module")
def modules():
    sys.path.insert(0, str(EVALUATION))
    try:
        import eval_dialogue
        import question_bank
    finally:
        sys.path.pop(0)
    return eval_dialogue, question_bank


def test_bank_evaluation_with_the_grounded_responder(modules, tmp_path):
    eval_dialogue, _ = modules
    assert eval_dialogue.main(["--bank", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "bank_metrics.json").read_text())
    reading, answers = payload["metrics"]["reading"], payload["metrics"]["answers"]
    assert reading["n_questions"] >= 300 and 0.0 <= reading["intent_accuracy"] <= 1.0
    # The grounded responder has the evidence: any yes/no that disagrees with it is a bug.
    assert answers["n_polarity_judged"] > 1000 and answers["polarity_accuracy"] == 1.0, payload["wrong_answers"][:5]
    assert answers["refused_out_of_scope"] > 0.9 and answers["refused_in_scope"] < 0.05
    assert "intent_accuracy" in (tmp_path / "bank_metrics.md").read_text()
    lines = (tmp_path / "bank_answers.jsonl").read_text().splitlines()
    assert len(lines) == answers["n_answers"] == reading["n_questions"] * payload["settings"]["scenarios"]


def test_scoring_notices_wrong_answers(modules):
    _, question_bank = modules
    from zsad.prompts import load_prompt_bank

    kinds = list(load_prompt_bank().defects)
    entries = [e for e in question_bank.load_bank(vocabulary=kinds) if e.polarity in ("defect", "good")][:40]
    cases = question_bank.scenarios(kinds)
    always_yes = question_bank.ask_bank(entries, cases, lambda question, case: ("Yes.", None))
    metrics = question_bank.answer_metrics(always_yes)
    assert 0.0 < metrics["polarity_accuracy"] < 0.9 and metrics["refused_in_scope"] == 0.0
    assert question_bank.wrong_answers(always_yes)
    silent = question_bank.answer_metrics(question_bank.ask_bank(entries, cases[:1], lambda q, c: ("Maybe.", None)))
    assert silent["polarity_accuracy"] == 0.0 and silent["unparsed"] == 1.0
    # every scenario decides something both ways: the bank is not answerable by one fixed word
    expected = {r["expected"] for r in always_yes}
    assert {True, False} <= expected


def test_bank_entries_are_checked(modules, tmp_path):
    _, question_bank = modules
    bad = tmp_path / "bank.yaml"
    bad.write_text('questions:\n  - {q: "Is it ok?", intent: presence}\n')
    with pytest.raises(UsageError, match="entry 1 .*polarity goes with the presence intent"):
        question_bank.load_bank(bad)
    bad.write_text('questions:\n  - {q: "Any burrs?", intent: presence, polarity: defect, type: burr}\n')
    with pytest.raises(UsageError, match="unknown defect type 'burr'"):
        question_bank.load_bank(bad, vocabulary=["scratch"])


def test_bank_evaluation_with_a_tiny_lvlm(modules, tmp_path):
    pytest.importorskip("transformers")
    eval_dialogue, _ = modules
    assert eval_dialogue.main(["--bank", "--out", str(tmp_path), "--lvlm", "tiny-random", "--device", "cpu",
                               "--bank-limit", "2", "--max-new-tokens", "3"]) == 0
    answers = json.loads((tmp_path / "bank_metrics.json").read_text())["metrics"]["answers"]
    assert 0.0 <= answers["model_polarity_accuracy"] <= 1.0 and 0.0 <= answers["overruled"] <= 1.0
    assert answers["polarity_accuracy"] == 1.0  # checked against the evidence before the user sees it
