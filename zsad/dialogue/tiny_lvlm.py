"""A tiny randomly initialised SmolVLM with an in-memory tokenizer and processor (no download).

Tests and ``--lvlm tiny-random`` need the real code path of a vision-language model — processor, chat template,
image placeholders, generate, LoRA — without weights (lvlm.md §4.2): text hidden 64, 2 layers; vision hidden 32,
2 layers, 32 px images, patch 16, pixel-shuffle scale 2 -> one image token per image. Its answers are noise.
"""

from __future__ import annotations

import re
from typing import Any

#: The name that selects this model in ``LvlmResponder.load`` and ``--base`` / ``--lvlm``.
TINY_RANDOM = "tiny-random"
IMAGE_SIZE = 32

_SPECIALS = ("<pad>", "<unk>", "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
             "<global-img>", "<video>")
_BASE_WORDS = (
    "User Assistant : , . ; ? ! ( ) % = - the a an is are there any anomaly anomalies defect defects no yes not "
    "normal image object in at of on with and or it this what where how many which type kind region regions top "
    "bottom left right center middle detector score threshold slightly moderately highly suspicious found tiny small "
    "medium large likely p one two three four five six more area photo flaw damage 0 1 2 3 4 5 6 7 8 9 "
    "scratch crack hole contamination bent cut missing misplaced color fold print glue broken good"
)

# A SmolVLM-like template with {% generation %} tags so the tokenizer can return assistant masks.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "<|im_start|>{{ 'User' if m['role'] != 'assistant' else 'Assistant' }}:"
    "{%- if m['content'] is string -%}"
    "{%- if m['role'] == 'assistant' %} {% generation %}{{ m['content'] }}<end_of_utterance>{% endgeneration %}"
    "{%- else %} {{ m['content'] }}<end_of_utterance>{%- endif -%}"
    "{%- else -%}"
    "{%- if m['role'] == 'assistant' %} {% generation %}"
    "{%- for c in m['content'] -%}{%- if c['type'] == 'text' -%}{{ c['text'] }}{%- endif -%}{%- endfor -%}"
    "<end_of_utterance>{% endgeneration %}"
    "{%- else -%}"
    "{%- for c in m['content'] -%}{%- if c['type'] == 'image' -%}<image>{%- else %} {{ c['text'] }}{%- endif -%}"
    "{%- endfor -%}<end_of_utterance>"
    "{%- endif -%}{%- endif %}\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>Assistant:{%- endif -%}"
)


def _vocabulary() -> list[str]:
    """Special tokens, a base word list and every word of the dialogue paraphrase tables (so training text is
    not all ``<unk>``)."""
    words = set(_BASE_WORDS.split())
    try:
        from zsad.dialogue.instructions import load_dialogue_tables

        for phrases in load_dialogue_tables().all_phrases():
            words.update(re.findall(r"\w+|[^\w\s]", phrases.lower()))
            words.update(re.findall(r"\w+|[^\w\s]", phrases))
    except Exception:  # noqa: BLE001 - the tables only enrich the vocabulary; the model works without them
        pass
    return [*_SPECIALS, *sorted(words)]


def tiny_tokenizer() -> Any:
    """A word-level fast tokenizer built in memory, with SmolVLM's special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(_vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<|im_start|>",
        eos_token="<end_of_utterance>", additional_special_tokens=list(_SPECIALS[2:]),
        extra_special_tokens={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                              "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"},
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_processor() -> Any:
    """An Idefics3 processor (SmolVLM's, minus its num2words video dependency) around :func:`tiny_tokenizer`: 32 px images, no splitting, 1 token per image."""
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    images = Idefics3ImageProcessor(
        do_image_splitting=False, size={"longest_edge": IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE},
        do_resize=True,
    )
    return Idefics3Processor(image_processor=images, tokenizer=tiny_tokenizer(), image_seq_len=1,
                             chat_template=CHAT_TEMPLATE)


def tiny_model(tokenizer: Any, seed: int = 0) -> Any:
    """An Idefics3ForConditionalGeneration (SmolVLM's architecture) with random weights sized to ``tokenizer`` (~0.2 M parameters)."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    vocab_size = len(tokenizer)
    config = Idefics3Config(
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=2,
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": IMAGE_SIZE, "patch_size": 16},
        text_config={"model_type": "llama", "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 2048, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Idefics3ForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    return model


def tiny_lvlm(seed: int = 0) -> tuple[Any, Any]:
    """``(model, processor)`` of a tiny random SmolVLM."""
    processor = tiny_processor()
    return tiny_model(processor.tokenizer, seed=seed), processor
