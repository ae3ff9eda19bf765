"""Training data and evaluation of the dialogue LVLM: synthesised instruction dialogues
(:mod:`~zsad.dialogue.training.instructions`), what they overlap with (:mod:`~zsad.dialogue.training.overlap`),
LoRA fine-tuning (:mod:`~zsad.dialogue.training.train`) and the dialogue metrics
(:mod:`~zsad.dialogue.training.judge`). Serving code (understand, answer, lvlm) never imports this package.
"""
