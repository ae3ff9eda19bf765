"""Grounded answers answer the question asked: polarity both ways, type and place questions, follow-ups, "why".

Decisions come from :func:`zsad.decisions.decide` on planted maps, forced anomalous or normal with the threshold.
"""

import numpy as np
import pytest

from zsad.decisions import Thresholds, decide
from zsad.dialogue import Conversation, GroundedResponder, evidence_from_result
from zsad.dialogue.answer.grounded import CAN_ONLY_TELL
from zsad.dialogue.answer.replies import parse_literal_yes_no
from zsad.prompts import load_prompt_bank
from zsad.types import RawOutput

KINDS = list(load_prompt_bank().defects)


def _probs(**chosen):
    rest = (1.0 - sum(chosen.values())) / (len(KINDS) - len(chosen))
    return {k: chosen.get(k, rest) for k in KINDS}


def _raw(probs=None):
    amap = np.full((90, 90), 0.1, np.float32)
    amap[40:50, 40:50] = 0.9  # center, the hottest
    amap[70:85, 70:85] = 0.7  # bottom right, the largest
    return RawOutput(image_score=0.6, anomaly_map=amap, method="m",
                     defect_probs=_probs(misplaced=0.11, color=0.09) if probs is None else probs)


def _evidence(threshold, probs=None):
    return evidence_from_result(decide(_raw(probs), Thresholds(threshold)), class_name="part")


ANOMALOUS, NORMAL = 0.5, 1.0
responder = GroundedResponder()


@pytest.mark.parametrize("question", ["Is this image normal?", "Does it look good?", "Is the product flawless?",
                                      "Is it free of defects?", "Is the part ok to ship?", "no defects?",
                                      "would you ship this?"])
def test_good_polarity_is_no_on_anomalous_and_yes_on_normal(question):
    anomalous = responder.answer(question, _evidence(ANOMALOUS))
    normal = responder.answer(question, _evidence(NORMAL))
    assert anomalous.startswith("No, the part looks defective")
    assert normal.startswith("Yes, the part looks normal")


@pytest.mark.parametrize("question", ["Is there a defect?", "Is it damaged?", "Should I reject it?"])
def test_defect_polarity_is_yes_on_anomalous_and_no_on_normal(question):
    assert responder.answer(question, _evidence(ANOMALOUS)).startswith("Yes, the part looks defective")
    assert responder.answer(question, _evidence(NORMAL)).startswith("No, I see no defect")


def test_either_or_question_gets_the_verdict():
    assert responder.answer("Is it normal or defective?", _evidence(ANOMALOUS)).startswith("Defective:")
    assert responder.answer("good or bad?", _evidence(NORMAL)).startswith("Normal:")


def test_type_question_not_matching_the_detected_type():
    answer = responder.answer("Is there a crack?", _evidence(ANOMALOUS))
    assert answer.startswith("No crack found; the anomalous region at the bottom right looks more like a "
                             "misplaced component (probability 0.11)")
    assert responder.answer("Any scratches?", _evidence(ANOMALOUS)).startswith("No scratch found")
    assert responder.answer("Is it free of cracks?", _evidence(ANOMALOUS)).startswith("Yes, no crack found")
    assert responder.answer("Is there a crack?", _evidence(NORMAL)).startswith("No, I see no crack")


def test_type_question_matching_the_detected_or_a_close_type():
    ev = _evidence(ANOMALOUS, _probs(scratch=0.40, crack=0.30))
    assert responder.answer("Is it scratched?", ev).startswith("Yes, there is a scratch (probability 0.40)")
    close = responder.answer("Any cracks?", ev)  # 0.30 >= half of 0.40 and >= 2/12: the runner-up counts
    assert close.startswith("Yes, possibly a crack (probability 0.30)") and "a scratch (probability 0.40)" in close
    assert responder.answer("Is there a hole?", ev).startswith("No hole found")
    assert responder.answer("No scratches?", ev).startswith("No, there is a scratch")


def test_type_answers_use_noun_phrases_and_a_detector_without_types_cannot_tell():
    assert responder.answer("What kind of defect is this?", _evidence(ANOMALOUS)).startswith(
        "It looks like a misplaced component (probability 0.11), a weak guess among 12 types")
    assert responder.answer("Is it a crack or a hole?", _evidence(ANOMALOUS)).startswith(
        "Neither: it looks like a misplaced component")
    assert responder.answer("What kind of defect is this?", _evidence(NORMAL)).startswith("There is no defect")
    untyped = _evidence(ANOMALOUS, probs={})
    assert responder.answer("Is there a crack?", untyped).startswith("I cannot tell whether it is a crack")
    assert parse_literal_yes_no(responder.answer("Is there a crack?", untyped)) is None


def test_place_questions_answer_from_the_regions_in_that_place():
    ev = _evidence(ANOMALOUS)
    assert ev.cells() == {"center", "bottom right"}
    assert responder.answer("Is there a defect in the bottom right?", ev).startswith(
        "Yes, there is a defect at the bottom right: a medium region (2.8 % of the image)")
    assert responder.answer("Anything in the top left?", ev).startswith(
        "No, nothing at the top left: the defect is at the bottom right and the center")
    assert responder.answer("Is the top left ok?", ev).startswith("Yes, the top left looks fine")
    assert responder.answer("Are the corners fine?", ev).startswith("No, there is a defect in the corners")
    assert responder.answer("Is there a defect near the edges?", _evidence(NORMAL)).startswith(
        "No, I see no defect near the edges or anywhere else")
    assert responder.answer("Is there a misplaced part at the center?", ev).startswith(
        "Yes, there is a defect at the center")
    assert responder.answer("Is there a crack at the center?", ev).startswith("No crack found")


def test_a_region_spilling_into_the_asked_place_is_mentioned():
    amap = np.full((90, 90), 0.1, np.float32)
    amap[20:70, 20:70] = 0.9  # centroid in the center cell, spilling into its neighbours
    ev = evidence_from_result(decide(RawOutput(0.9, amap, "m", _probs(hole=0.5)), Thresholds(0.5)))
    answer = responder.answer("Is there a defect at the top left?", ev)
    assert answer.startswith("No, nothing at the top left") and "reaches into the top left" in answer


def test_follow_ups_resolve_it_and_there_to_the_last_region():
    conversation = Conversation(evidence=_evidence(ANOMALOUS))
    assert conversation.ask("Is there anything at the center?").startswith("Yes, there is a defect at the center")
    assert conversation.ask("How big is it?").startswith("The region at the center is small")
    assert conversation.ask("where is it?").startswith("It is at the center of the image")
    conversation.ask("Where is the defect?")  # about the whole image: no region in focus any more
    assert conversation.ask("How big is it?").startswith("The largest region is medium")
    conversation.ask("Is the bottom right damaged?")
    assert conversation.ask("Is there a defect there?").startswith("Yes, there is a defect at the bottom right")
    assert conversation.ask("Why?").startswith("Because the anomaly score 0.60 is at or above the threshold 0.50")


def test_why_states_the_evidence():
    why = responder.answer("How do you know?", _evidence(ANOMALOUS))
    assert why.startswith("Because the anomaly score 0.60 is at or above the threshold 0.50")
    assert "the hottest region is at the center" in why and "peak of 0.90" in why
    normal = responder.answer("Why?", _evidence(NORMAL))
    assert normal == "Because the anomaly score 0.60 is below the threshold 1.00; the hottest point of the " \
                     "anomaly map is 0.90."


def test_several_questions_on_a_normal_image_get_one_no_but_why_is_kept():
    ev = _evidence(NORMAL)
    assert responder.answer("where is it and how big?", ev) == responder.answer("is there a defect?", ev)
    both = responder.answer("Is it ok? Why?", ev)
    assert both.startswith("Yes, the part looks normal") and "Because the anomaly score" in both


@pytest.mark.parametrize("question", ["What's the weather like today?", "What colour is the sky?", "hello",
                                      "How much does this part cost?"])
def test_out_of_scope_questions_are_refused(question):
    assert responder.answer(question, _evidence(ANOMALOUS)) == CAN_ONLY_TELL
