"""Tiny randomly initialised LVLMs of each family, built in code without downloads
(:mod:`~zsad.dialogue.lvlm.tiny.tiny_lvlm` names them)."""
