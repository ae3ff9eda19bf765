"""Questions about defects answered in words that agree with the anomaly map.

The detector owns the evidence (:mod:`zsad.dialogue.evidence`); :class:`GroundedResponder` states it with
rules, an LVLM (:mod:`zsad.dialogue.lvlm`, needs the ``dialogue`` extra) phrases it while looking at the image.
Importing this package does not import transformers.
"""

from zsad.dialogue.conversation import Conversation
from zsad.dialogue.evidence import Evidence, RegionEvidence, evidence_from_mask, evidence_from_result
from zsad.dialogue.grounded import GroundedResponder
from zsad.dialogue.intents import Intent
from zsad.dialogue.polarity import Polarity
from zsad.dialogue.questions import Question, QuestionReader, recognise
from zsad.dialogue.responder import Responder

__all__ = ["Conversation", "Evidence", "GroundedResponder", "Intent", "Polarity", "Question", "QuestionReader",
           "RegionEvidence", "Responder", "evidence_from_mask", "evidence_from_result", "recognise"]
