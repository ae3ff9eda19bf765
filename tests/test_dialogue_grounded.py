"""Grounded dialogue: evidence from masks and results, intent recognition, answers that agree with the evidence.

Evidence built from a synthetic image's ground-truth mask makes these hold for any detector weights.
"""

import numpy as np
import pytest

from zsad.data.synthetic import make_sample
from zsad.decisions import Thresholds, decide
from zsad.dialogue import Conversation, GroundedResponder, Intent, evidence_from_mask, recognise
from zsad.dialogue.answer.grounded import CAN_ONLY_TELL
from zsad.errors import WeightsNotFoundError
from zsad.types import RawOutput

CORNERS = {"top left": (0.18, 0.18), "top right": (0.82, 0.18), "bottom left": (0.18, 0.82),
           "bottom right": (0.82, 0.82), "center": (0.5, 0.5)}


def _planted(defect: str, where: str, seed: int = 0):
    return make_sample("carpet", defect, size=192, rng=np.random.default_rng(seed), location=CORNERS[where])


@pytest.mark.parametrize("where", list(CORNERS))
@pytest.mark.parametrize("defect", ["hole", "scratch", "contamination"])
def test_where_and_what_name_the_planted_defect(defect, where):
    sample = _planted(defect, where)
    evidence = evidence_from_mask(sample.mask, defect_type=defect, class_name="carpet")
    responder = GroundedResponder()
    assert evidence.anomalous and where in evidence.cells()
    assert where in responder.answer("Where is the defect?", evidence)
    assert defect in responder.answer("What kind of defect is it?", evidence)
    assert responder.answer("Is there a defect?", evidence).startswith("Yes")


def test_normal_image_has_no_defect():
    sample = make_sample("carpet", None, size=128, rng=np.random.default_rng(1))
    evidence = evidence_from_mask(sample.mask, class_name="carpet")
    responder = GroundedResponder()
    assert not evidence.anomalous and evidence.regions == ()
    assert responder.answer("is there any defect?", evidence).startswith("No, I see no defect")
    assert "Nowhere" in responder.answer("where?", evidence)
    assert "no defect" in responder.answer("what type?", evidence)
    assert "no defect region" in responder.answer("how many defects?", evidence)
    assert responder.answer("is there a defect and where? how big?", evidence) == responder.answer("is there a defect?", evidence)


def test_two_regions_are_counted_sized_and_located():
    mask = np.zeros((90, 90), bool)
    mask[2:20, 2:20] = True  # top left, 324 px = 4 % -> medium
    mask[80:84, 80:84] = True  # bottom right, 16 px = 0.2 % -> tiny
    evidence = evidence_from_mask(mask, "hole")
    assert [r.cell for r in evidence.regions] == ["top left", "bottom right"]
    assert [r.size for r in evidence.regions] == ["medium", "tiny"]
    responder = GroundedResponder()
    assert "2 defect regions" in responder.answer("How many defects are there?", evidence)
    where = responder.answer("where are they", evidence)
    assert "top left" in where and "bottom right" in where
    size = responder.answer("how big is it?", evidence)
    assert "medium" in size and "4.0 %" in size and "18×18 px" in size


def test_several_intents_answered_in_order():
    mask = np.zeros((60, 60), bool)
    mask[45:55, 2:12] = True
    answer = GroundedResponder().answer("Where is it and how big?", evidence_from_mask(mask, "crack"))
    assert answer.index("bottom left") < answer.index("medium")  # 100 px of 3600 = 2.8 %


@pytest.mark.parametrize("question,intents", [
    ("Is there a defect?", [Intent.PRESENCE]),
    ("is it OK", [Intent.PRESENCE]),
    ("Defective?", [Intent.PRESENCE]),
    ("any anomalies in this part", [Intent.PRESENCE]),
    ("Should I reject it?", [Intent.PRESENCE]),
    ("WHERE IS THE DEFECT", [Intent.LOCATION]),
    ("wher is teh defcet", [Intent.LOCATION]),
    ("Which part of the image is damaged?", [Intent.LOCATION]),
    ("can you locate the anomaly", [Intent.LOCATION]),
    ("What kind of defect is it?", [Intent.TYPE]),
    ("what type of damage is this", [Intent.TYPE]),
    ("whats wrong with it", [Intent.TYPE]),
    ("how many defects are there", [Intent.COUNT]),
    ("number of anomalies?", [Intent.COUNT]),
    ("How big is it?", [Intent.SIZE]),
    ("how lareg is the defect", [Intent.SIZE]),
    ("what fraction of the image is affected", [Intent.SIZE]),
    ("how sure are you?", [Intent.CONFIDENCE]),
    ("how confidnet is the detector", [Intent.CONFIDENCE]),
    ("Describe it.", [Intent.DESCRIBE]),
    ("please explain what you see", [Intent.DESCRIBE]),
    ("where is it and how big?", [Intent.LOCATION, Intent.SIZE]),
    ("What's the weather like?", []),
    ("hello", []),
])
def test_intent_recognition_across_paraphrases_and_typos(question, intents):
    assert recognise(question) == intents


def test_unknown_question_says_what_it_can_tell():
    evidence = evidence_from_mask(np.zeros((10, 10), bool))
    answer = GroundedResponder().answer("What colour is the sky?", evidence)
    assert answer == CAN_ONLY_TELL and answer.startswith("I can only tell")


class _Failing:
    name = "lvlm"

    def answer(self, question, evidence, **kwargs):
        raise WeightsNotFoundError("model X is not in the Hugging Face cache")


def test_conversation_keeps_history_and_falls_back_to_grounded_answers():
    sample = _planted("hole", "top left")
    amap = sample.mask.astype(np.float32)
    result = decide(RawOutput(image_score=0.9, anomaly_map=amap, method="m", defect_probs={"hole": 1.0}), Thresholds(0.5))
    conversation = Conversation.from_result(result, sample.image, class_name="carpet")
    assert conversation.overlay is not None and conversation.overlay.size == sample.image.size
    assert "top left" in conversation.ask("where is the defect?")
    assert "hole" in conversation.ask("and what kind is it?")
    assert [q for q, _ in conversation.history] == ["where is the defect?", "and what kind is it?"]
    conversation.responder = _Failing()
    assert "top left" in conversation.ask("where?")
    assert conversation.notes and "not in the Hugging Face cache" in conversation.notes[0]
    assert len(conversation.history) == 3
