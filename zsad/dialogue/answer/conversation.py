"""A conversation about one image: the evidence stays fixed, questions and answers accumulate.

The responder (grounded by default, an LVLM when configured) only states the evidence. It gets the history, so
follow-ups are read in context: "it" and "there" mean the last region talked about (:mod:`zsad.dialogue.answer.focus`).
If it fails with a user-facing error (e.g. the LVLM's weights are missing offline), the grounded answer is given
instead and the reason kept in :attr:`Conversation.notes`, so the chat never breaks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from zsad.dialogue.answer.grounded import GroundedResponder
from zsad.dialogue.answer.responder import Responder
from zsad.dialogue.evidence import Evidence, evidence_from_result
from zsad.errors import ZsadError
from zsad.types import AnomalyResult

log = logging.getLogger(__name__)


@dataclass
class Conversation:
    evidence: Evidence
    image: Image.Image | None = None
    overlay: Image.Image | None = None
    responder: Responder = field(default_factory=GroundedResponder)
    history: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_result(cls, result: AnomalyResult, image: Image.Image | None = None, *, class_name: str = "object",
                    responder: Responder | None = None) -> Conversation:
        """A conversation about a detector's result; with the image, the overlay is drawn for the LVLM."""
        overlay_image = None
        if image is not None:
            from zsad.visualize import overlay

            image = image.convert("RGB")
            if image.size == result.size:
                overlay_image = overlay(image, np.asarray(result.anomaly_map), result.pred_mask)
        return cls(evidence=evidence_from_result(result, class_name=class_name), image=image,
                   overlay=overlay_image, responder=responder or GroundedResponder())

    def ask(self, question: str) -> str:
        question = question.strip()
        if not question:
            answer = "Please ask a question about the image."
        else:
            try:
                answer = self.responder.answer(question, self.evidence, image=self.image, overlay=self.overlay,
                                               history=tuple(self.history))
            except ZsadError as exc:
                note = f"{getattr(self.responder, 'name', 'responder')} failed ({exc}); answered from the evidence"
                log.warning("%s", note)
                self.notes.append(note)
                answer = GroundedResponder().answer(question, self.evidence, history=tuple(self.history))
        self.history.append((question, answer))
        return answer
