"""A tiny randomly initialised LLaVA-OneVision with an in-memory tokenizer and processor (no download).

LLaVA-OneVision's own classes: ``LlavaOnevisionForConditionalGeneration`` (SigLIP -> 2-layer MLP projector ->
Qwen2) and ``LlavaOnevisionProcessor`` (AnyRes: a base view plus grid crops, ``<image>`` repeated per feature).
Text hidden 64, 2 layers; SigLIP hidden 32, 2 layers, 32 px, patch 16 (4 tokens per view); one 32 px grid
(lvlm.md §4.1: a single grid on CPU) and ``vision_feature_select_strategy="full"`` (§4.2), so an image is about
10 tokens. Its answers are noise.
"""

from __future__ import annotations

from typing import Any

from zsad.dialogue.lvlm.tiny.tiny_common import finish, seeded, word_tokenizer

IMAGE_SIZE = 32
PATCH = 16

_SPECIALS = ("<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
_ROLE_WORDS = ("system", "user", "assistant")

# llava-hf's OneVision template (images first, then each text on its own line) with {% generation %} tags.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "<|im_start|>{{ m['role'] }} "
    "{%- if m['content'] is string -%}"
    "{%- if m['role'] == 'assistant' -%}{% generation %}{{ '\n' + m['content'] }}<|im_end|>{% endgeneration %}"
    "{%- else -%}{{ '\n' + m['content'] }}<|im_end|>{%- endif -%}"
    "{%- else -%}"
    "{%- for c in m['content'] | selectattr('type', 'equalto', 'image') -%}<image>{%- endfor -%}"
    "{%- if m['role'] == 'assistant' -%}{% generation %}"
    "{%- for c in m['content'] | selectattr('type', 'equalto', 'text') -%}{{ '\n' + c['text'] }}{%- endfor -%}"
    "<|im_end|>{% endgeneration %}"
    "{%- else -%}"
    "{%- for c in m['content'] | selectattr('type', 'equalto', 'text') -%}{{ '\n' + c['text'] }}{%- endfor -%}"
    "<|im_end|>"
    "{%- endif -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\n' }}{%- endif -%}"
)


def tiny_tokenizer() -> Any:
    return word_tokenizer(_SPECIALS, chat_template=CHAT_TEMPLATE, eos="<|im_end|>", extra_words=_ROLE_WORDS,
                          named={"image_token": "<image>", "video_token": "<video>"})


def tiny_processor() -> Any:
    """A LlavaOnevisionProcessor around :func:`tiny_tokenizer`: 32 px views, one 32 px grid."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    images = LlavaOnevisionImageProcessor(size=square, crop_size=square, image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]])
    videos = LlavaOnevisionVideoProcessor(size=square)
    return LlavaOnevisionProcessor(image_processor=images, tokenizer=tiny_tokenizer(), video_processor=videos,
                                   num_image_tokens=(IMAGE_SIZE // PATCH) ** 2, vision_feature_select_strategy="full",
                                   chat_template=CHAT_TEMPLATE)


def tiny_model(tokenizer: Any, seed: int = 0) -> Any:
    """A LlavaOnevisionForConditionalGeneration with random weights sized to ``tokenizer`` (~0.15 M parameters)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    config = LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 2048, "pad_token_id": tokenizer.pad_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None},
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": IMAGE_SIZE,
                       "patch_size": PATCH, "vision_use_head": False},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
    )
    return finish(seeded(lambda: LlavaOnevisionForConditionalGeneration(config), seed), tokenizer)


def tiny_lvlm(seed: int = 0) -> tuple[Any, Any]:
    """``(model, processor)`` of a tiny random LLaVA-OneVision."""
    processor = tiny_processor()
    return tiny_model(processor.tokenizer, seed=seed), processor
