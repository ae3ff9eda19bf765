"""What the tiny random LVLMs of every family share: an in-memory word-level tokenizer and seeded construction.

No download: each family's tokenizer is a WordLevel vocabulary of the words the dialogues use (the dialogue tables
and a base list), so training text is not all ``<unk>`` and "Yes" / "No" are single tokens for the first-token
P(yes) (lvlm.md §4.2). Each family adds its own special tokens and chat template.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from zsad.dialogue.tables import load_dialogue_tables

T = TypeVar("T")

BASE_WORDS = (
    "User Assistant : , . ; ? ! ( ) % = - the a an is are there any anomaly anomalies defect defects no yes not "
    "normal image object in at of on with and or it this what where how many which type kind region regions top "
    "bottom left right center middle detector score threshold slightly moderately highly suspicious found tiny small "
    "medium large likely p one two three four five six more area photo flaw damage 0 1 2 3 4 5 6 7 8 9 "
    "scratch crack hole contamination bent cut missing misplaced color fold print glue broken good"
)


def dialogue_words() -> list[str]:
    """The base words and every word of the dialogue paraphrase tables, sorted."""
    words = set(BASE_WORDS.split())
    try:
        for phrases in load_dialogue_tables().all_phrases():
            words.update(re.findall(r"\w+|[^\w\s]", phrases.lower()))
            words.update(re.findall(r"\w+|[^\w\s]", phrases))
    except Exception:  # noqa: BLE001 - the tables only enrich the vocabulary; the model works without them
        pass
    return sorted(words)


def word_tokenizer(specials: Sequence[str], *, chat_template: str, eos: str, bos: str | None = None,
                   named: dict[str, str] | None = None, extra_words: Sequence[str] = ()) -> Any:
    """A fast word-level tokenizer: ``specials`` first (the first two must be ``<pad>`` and ``<unk>``), then the
    dialogue words and ``extra_words``; ``named`` are the family's extra special tokens (``image_token`` ...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if tuple(specials[:2]) != ("<pad>", "<unk>"):
        raise ValueError("specials must start with <pad>, <unk>")
    words = sorted(set(dialogue_words()) | set(extra_words))
    vocab = {word: i for i, word in enumerate(dict.fromkeys([*specials, *words]))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token=bos, eos_token=eos,
        additional_special_tokens=list(specials[2:]), extra_special_tokens=dict(named or {}),
    )
    extra = {"additional_special_tokens": list(specials[2:])}  # every special unsplit and skipped in decoding
    try:
        tokenizer.add_special_tokens(extra, replace_extra_special_tokens=False)  # transformers 5
    except TypeError:
        tokenizer.add_special_tokens(extra, replace_additional_special_tokens=False)  # transformers 4
    if len(tokenizer) != len(vocab):
        raise RuntimeError("a special token of the tiny tokenizer is missing from its vocabulary")
    tokenizer.chat_template = chat_template
    return tokenizer


def seeded(build: Callable[[], T], seed: int) -> T:
    """``build()`` under ``torch.manual_seed(seed)``, leaving the global generator as it was."""
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


def finish(model: Any, tokenizer: Any) -> Any:
    """Generation ids from the tokenizer; eval mode."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    return model
