"""A vision-language model that phrases the detector's evidence while looking at the image (needs the
``dialogue`` extra): :class:`LvlmResponder` (:mod:`~zsad.dialogue.lvlm.responder`), its LoRA adapters
(:mod:`~zsad.dialogue.lvlm.lora`) and tiny random models for tests and smoke runs (:mod:`~zsad.dialogue.lvlm.tiny`).
Importing this package does not import transformers.
"""

from zsad.dialogue.lvlm.responder import DEFAULT_LVLM, OPTIONAL_LVLMS, LvlmResponder

__all__ = ["DEFAULT_LVLM", "OPTIONAL_LVLMS", "LvlmResponder"]
