"""Stating the detector's evidence as answers: what it says about a question
(:mod:`~zsad.dialogue.answer.verdict`), the rule-based :class:`~zsad.dialogue.answer.grounded.GroundedResponder`,
conversations, and holding an LVLM's answer to the evidence (:mod:`~zsad.dialogue.answer.agreement`).
"""
