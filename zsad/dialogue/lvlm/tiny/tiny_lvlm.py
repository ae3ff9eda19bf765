"""Tiny randomly initialised LVLMs built from configs in code, with in-memory tokenizers and processors.

Tests and ``--lvlm`` / ``--base`` smoke runs need the real code path of each vision-language family zsad offers —
processor, chat template, image placeholders, generate, LoRA — without weights (lvlm.md §4.2). This module names
them (:data:`TINY_MODELS`) and builds the SmolVLM one: text hidden 64, 2 layers; vision hidden 32, 2 layers, 32 px
images, patch 16, pixel-shuffle scale 2 -> one image token per image. The LLaVA-OneVision and Qwen2-VL ones live
in :mod:`zsad.dialogue.lvlm.tiny.tiny_llava_ov` and :mod:`zsad.dialogue.lvlm.tiny.tiny_qwen2_vl`. Their answers are
noise.
"""

from __future__ import annotations

import importlib
from typing import Any

from zsad.dialogue.lvlm.tiny.tiny_common import dialogue_words, finish, seeded, word_tokenizer

#: The name that selects the tiny SmolVLM in ``LvlmResponder.load`` and ``--base`` / ``--lvlm``.
TINY_RANDOM = "tiny-random"
#: Every tiny model: name -> (family, module with its ``tiny_lvlm(seed)``).
TINY_MODELS: dict[str, tuple[str, str]] = {
    TINY_RANDOM: ("SmolVLM", __name__),
    "tiny-random-smolvlm": ("SmolVLM", __name__),
    "tiny-random-llava-onevision": ("LLaVA-OneVision", "zsad.dialogue.lvlm.tiny.tiny_llava_ov"),
    "tiny-random-qwen2-vl": ("Qwen2-VL", "zsad.dialogue.lvlm.tiny.tiny_qwen2_vl"),
}
IMAGE_SIZE = 32

_SPECIALS = ("<pad>", "<unk>", "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
             "<global-img>", "<video>")

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


def is_tiny(name: str) -> bool:
    """Whether ``name`` selects a tiny random model rather than weights."""
    return name in TINY_MODELS


def load_tiny(name: str, seed: int = 0) -> tuple[Any, Any]:
    """``(model, processor)`` of the tiny model ``name`` (one of :data:`TINY_MODELS`)."""
    if name not in TINY_MODELS:
        raise KeyError(f"no tiny model '{name}'; choose one of: {', '.join(TINY_MODELS)}")
    return importlib.import_module(TINY_MODELS[name][1]).tiny_lvlm(seed=seed)


def _vocabulary() -> list[str]:
    return [*_SPECIALS, *dialogue_words()]


def tiny_tokenizer() -> Any:
    """A word-level fast tokenizer built in memory, with SmolVLM's special tokens and a chat template."""
    return word_tokenizer(
        _SPECIALS, chat_template=CHAT_TEMPLATE, bos="<|im_start|>", eos="<end_of_utterance>",
        named={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
               "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"},
    )


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
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    config = Idefics3Config(
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=2,
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": IMAGE_SIZE, "patch_size": 16},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 2048, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
    )
    return finish(seeded(lambda: Idefics3ForConditionalGeneration(config), seed), tokenizer)


def tiny_lvlm(seed: int = 0) -> tuple[Any, Any]:
    """``(model, processor)`` of a tiny random SmolVLM."""
    processor = tiny_processor()
    return tiny_model(processor.tokenizer, seed=seed), processor
