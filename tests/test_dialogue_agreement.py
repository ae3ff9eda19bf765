"""The LVLM path understands questions like the grounded one: the hint states the answer's polarity, a yes/no that
contradicts the evidence is replaced by the grounded answer, and out-of-scope questions never reach the model."""

import random

import numpy as np
import pytest
import torch

from zsad.decisions import Thresholds, decide
from zsad.dialogue import GroundedResponder, evidence_from_mask, evidence_from_result
from zsad.dialogue.answer.agreement import answer_hint, check, lvlm_hint
from zsad.dialogue.answer.grounded import CAN_ONLY_TELL
from zsad.dialogue.tables import load_dialogue_tables
from zsad.dialogue.training.instructions import dialogue_row
from zsad.types import RawOutput


@pytest.fixture
def evidence():
    amap = np.zeros((60, 60), np.float32)
    amap[25:35, 25:35] = 0.9
    return evidence_from_result(decide(RawOutput(0.8, amap, "m", {"misplaced": 0.6, "crack": 0.1, "hole": 0.3}),
                                       Thresholds(0.5)), class_name="part")


def _understood(question, evidence):
    return GroundedResponder().understand(question, evidence)


def test_hint_states_the_answer_for_the_asked_question(evidence):
    assert answer_hint(_understood("Is this image normal?", evidence), evidence) == \
        "Answer: No (the detector found a defect)."
    assert answer_hint(_understood("Is there a defect?", evidence), evidence) == \
        "Answer: Yes (the detector found a defect)."
    assert answer_hint(_understood("Is there a crack?", evidence), evidence) == \
        "Answer: No (the detector found no crack)."
    assert answer_hint(_understood("Anything at the top left?", evidence), evidence) == \
        "Answer: No (the detector found no defect at the top left)."
    assert answer_hint(_understood("Normal or defective?", evidence), evidence) == \
        "Answer: defective (the detector found a defect)."
    assert answer_hint(_understood("Where is it?", evidence), evidence) is None
    hint = lvlm_hint(evidence, _understood("Is it ok?", evidence))
    assert hint.startswith(evidence.to_text()) and hint.endswith("Answer: No (the detector found a defect).")


def test_prompt_carries_the_answer_hint(evidence):
    from zsad.dialogue.lvlm.responder import build_messages

    messages = build_messages("Is it ok?", evidence, 1, understood=_understood("Is it ok?", evidence))
    text = messages[-1]["content"][-1]["text"]
    assert evidence.to_text() in text and "Answer: No" in text and text.endswith("Is it ok?")


def test_check_keeps_agreeing_answers_and_replaces_contradicting_ones(evidence):
    q = _understood("Is this image normal?", evidence)
    grounded = GroundedResponder().reply(q, evidence)
    kept = check("No, there is a misplaced part.", q, evidence, grounded)
    assert kept.agreed is True and kept.text == "No, there is a misplaced part."
    replaced = check("Yes, it looks perfectly normal.", q, evidence, grounded)
    assert replaced.agreed is False and replaced.text.startswith(grounded)
    assert 'The language model answered "Yes, it looks perfectly normal."' in replaced.text
    assert check("It is a nice part.", q, evidence, grounded).agreed is False  # no yes/no at all
    where = _understood("Where is it?", evidence)
    assert check("top left", where, evidence, "-").agreed is None  # only yes/no questions are checked


class _Fake:
    """An LvlmResponder whose model always says ``said`` and counts the calls."""

    def __init__(self, said):
        from zsad.dialogue.lvlm import LvlmResponder

        self.responder = LvlmResponder(None, None, name="fake", device="cpu", dtype=torch.float32)
        self.calls = []
        self.responder.generate = lambda question, evidence, **kw: self.calls.append(kw) or said


def test_lvlm_responder_checks_and_refuses(evidence):
    fake = _Fake("Yes, it is fine.")
    answer = fake.responder.answer("Is it ok?", evidence)
    assert answer.startswith("No, the part looks defective") and "does not support" in answer
    assert fake.calls[0]["understood"].polarity.value == "good"
    assert fake.responder.answer("What's the weather like?", evidence) == CAN_ONLY_TELL
    assert len(fake.calls) == 1  # the out-of-scope question never reached the model
    agreeing = _Fake("No, a misplaced component at the center.")
    assert agreeing.responder.answer("Is the product flawless?", evidence) == "No, a misplaced component at the center."


def test_training_hints_carry_the_answer_to_the_first_question():
    mask = np.zeros((48, 48), bool)
    mask[2:10, 30:40] = True
    tables = load_dialogue_tables()
    rows = [dialogue_row("x.png", None, evidence_from_mask(mask if i % 2 else mask * 0, "scratch", "disc"), tables,
                         random.Random(i), hint_noise=0.0) for i in range(4)]
    for row in rows:
        assert row["hint"].endswith("Answer: Yes (the detector found a defect)." if row["anomalous"]
                                    else "Answer: No (the detector found no defect).")
