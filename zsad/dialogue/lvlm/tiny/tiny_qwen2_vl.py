"""A tiny randomly initialised Qwen2-VL with an in-memory tokenizer and processor (no download).

Qwen2-VL's own classes: ``Qwen2VLForConditionalGeneration`` (ViT with 2x2 patch merging -> Qwen2 text model with
multimodal RoPE) and ``Qwen2VLProcessor`` (a 2-D patch matrix plus ``image_grid_thw``; ``<|image_pad|>`` repeated
t*h*w/4 times). Text hidden 64, 2 layers, 4 heads (head 16, mrope sections 2+3+3); vision embed 32, 2 blocks,
patch 14; images resized to 56-112 px, so 4-16 image tokens each. Its answers are noise.
"""

from __future__ import annotations

from typing import Any

from zsad.dialogue.lvlm.tiny.tiny_common import finish, seeded, word_tokenizer

MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112

_SPECIALS = ("<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
             "<|video_pad|>")
_ROLE_WORDS = ("system", "user", "assistant", "You", "are", "helpful")

# Qwen2-VL's template (default system turn, <|vision_start|><|image_pad|><|vision_end|> per image) with
# {% generation %} tags around the assistant's words.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "<|im_start|>system{{ '\n' }}You are a helpful assistant.<|im_end|>{{ '\n' }}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "<|im_start|>{{ m['role'] }}{{ '\n' }}"
    "{%- if m['role'] == 'assistant' -%}{% generation %}"
    "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
    "{%- for c in m['content'] -%}{%- if c['type'] == 'text' -%}{{ c['text'] }}{%- endif -%}{%- endfor -%}"
    "{%- endif -%}<|im_end|>{% endgeneration %}"
    "{%- else -%}"
    "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
    "{%- for c in m['content'] -%}"
    "{%- if c['type'] == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif c['type'] == 'text' -%}{{ c['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}<|im_end|>"
    "{%- endif -%}{{ '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\n' }}{%- endif -%}"
)


def tiny_tokenizer() -> Any:
    return word_tokenizer(
        _SPECIALS, chat_template=CHAT_TEMPLATE, eos="<|im_end|>", extra_words=_ROLE_WORDS,
        named={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
               "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"},
    )


def tiny_processor(max_pixels: int = MAX_PIXELS) -> Any:
    """A Qwen2VLProcessor around :func:`tiny_tokenizer`: images resized to ``MIN_PIXELS``..``max_pixels``."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    images = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=max_pixels, patch_size=14, merge_size=2,
                                   temporal_patch_size=2)
    videos = Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS, max_pixels=max_pixels)
    return Qwen2VLProcessor(image_processor=images, tokenizer=tiny_tokenizer(), video_processor=videos,
                            chat_template=CHAT_TEMPLATE)


def tiny_model(tokenizer: Any, seed: int = 0) -> Any:
    """A Qwen2VLForConditionalGeneration with random weights sized to ``tokenizer`` (~0.2 M parameters)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 2048,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                     "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "bos_token_id": None},
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    return finish(seeded(lambda: Qwen2VLForConditionalGeneration(config), seed), tokenizer)


def tiny_lvlm(seed: int = 0) -> tuple[Any, Any]:
    """``(model, processor)`` of a tiny random Qwen2-VL."""
    processor = tiny_processor()
    return tiny_model(processor.tokenizer, seed=seed), processor
