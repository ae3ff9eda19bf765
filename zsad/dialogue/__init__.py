"""Questions about defects answered in words that agree with the anomaly map.

The detector owns the evidence (:mod:`zsad.dialogue.evidence`); :class:`GroundedResponder` states it with
rules, an LVLM (:mod:`zsad.dialogue.lvlm`, needs the ``dialogue`` extra) phrases it while looking at the image.
Importing this package does not import transformers.

Layout, one concern per sub-package; the serving ones never import :mod:`zsad.dialogue.training`:

* :mod:`zsad.dialogue.evidence` and :mod:`zsad.dialogue.tables` (the paraphrase tables of
  ``prompts/dialogue.yaml``): shared below everything else.
* :mod:`zsad.dialogue.understand`: reading a question.
* :mod:`zsad.dialogue.answer`: stating the evidence and answering, conversations, checking an LVLM's answer.
* :mod:`zsad.dialogue.lvlm`: the LVLM responder, LoRA adapters and the tiny test models.
* :mod:`zsad.dialogue.training`: instruction dialogues, LoRA training and the dialogue metrics.
"""

from zsad.dialogue.answer.conversation import Conversation
from zsad.dialogue.answer.grounded import GroundedResponder
from zsad.dialogue.answer.responder import Responder
from zsad.dialogue.evidence import Evidence, RegionEvidence, evidence_from_mask, evidence_from_result
from zsad.dialogue.understand.intents import Intent
from zsad.dialogue.understand.polarity import Polarity
from zsad.dialogue.understand.questions import Question, QuestionReader, recognise

__all__ = ["Conversation", "Evidence", "GroundedResponder", "Intent", "Polarity", "Question", "QuestionReader",
           "RegionEvidence", "Responder", "evidence_from_mask", "evidence_from_result", "recognise"]
