"""``zsad train-prompts`` and ``zsad adapters ...`` (TEMPORARY delegation, moved here next)."""

from zsad.adapters.cli import add_prompt_parsers as add_parser  # noqa: F401
