"""``zsad train-dialogue`` (TEMPORARY delegation, moved here next)."""

from zsad.dialogue.train import add_train_dialogue_parser as add_parser  # noqa: F401
