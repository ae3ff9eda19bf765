"""An LVLM that looks at the image and the heat-map overlay and phrases the detector's evidence (issue 6).

The detector owns the verdict; the model receives the image, the overlay (or a crop of the largest region when no
overlay is given), the evidence as text (:meth:`Evidence.to_text`, plus the evidence's answer to a yes/no question)
and the question, rendered with the processor's chat template, and answers greedily. The question is understood as
the grounded responder understands it: one it cannot place is refused without running the model, and a yes/no
answer that contradicts the evidence is replaced by the grounded one with a note
(:mod:`zsad.dialogue.answer.agreement`).
CPU-friendly settings per family (lvlm.md §4.1): SmolVLM without image splitting, Qwen2-VL with capped pixels,
LLaVA-OneVision with a single grid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from zsad.dialogue.answer.agreement import Checked, check, lvlm_hint
from zsad.dialogue.answer.grounded import GroundedResponder
from zsad.dialogue.evidence import Evidence
from zsad.dialogue.lvlm.tiny.tiny_lvlm import TINY_RANDOM, is_tiny
from zsad.dialogue.understand.questions import Question
from zsad.dialogue.understand.vocabulary import DefectVocabulary
from zsad.errors import WeightsNotFoundError

log = logging.getLogger(__name__)

DEFAULT_LVLM = "HuggingFaceTB/SmolVLM-256M-Instruct"
OPTIONAL_LVLMS = ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "Qwen/Qwen2-VL-2B-Instruct")
#: Qwen2-VL: at most this many pixels per image (~512 visual tokens of 28x28).
QWEN_MAX_PIXELS = 512 * 28 * 28
#: spellings of the first answer token counted as "yes" / "no" for the first-token probability
YES_SPELLINGS = ("Yes", " Yes", "yes", " yes", "YES")
NO_SPELLINGS = ("No", " No", "no", " no", "NO")


def resolve_lvlm_dir(model: str, *, cache_dir: str | None = None, offline: bool | None = None) -> str:
    """A local folder with the model's files: the path itself, the HF cache, or (online) a download."""
    from zsad.weights import snapshot_dir

    local = Path(model).expanduser()
    if local.is_dir():
        return str(local)
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise WeightsNotFoundError(f"LVLM '{model}' is neither a local folder nor a Hugging Face repo id (ORG/NAME)")
    return snapshot_dir(model, what=f"LVLM {model}", cache_dir=cache_dir, offline=offline,
                        advice=f"pass a local folder as --lvlm /path/to/model. The grounded answers (without "
                               f"--lvlm) need no LVLM; for a smoke run use --lvlm {TINY_RANDOM}.")


def cpu_friendly(model: Any, processor: Any) -> None:
    """Fewer visual tokens per image, by family (lvlm.md §4.1)."""
    images = getattr(processor, "image_processor", None)
    kind = type(model).__name__.lower()
    if images is None:
        return
    if hasattr(images, "do_image_splitting"):  # SmolVLM / Idefics3
        images.do_image_splitting = False
    if "qwen" in kind:
        _cap_qwen_pixels(images)
    if "onevision" in kind and hasattr(images, "image_grid_pinpoints"):
        side = int(getattr(getattr(model.config, "vision_config", None), "image_size", 384))
        images.image_grid_pinpoints = [[side, side]]
        model.config.image_grid_pinpoints = [[side, side]]


def _cap_qwen_pixels(images: Any, cap: int = QWEN_MAX_PIXELS) -> None:
    """At most ``cap`` pixels per image: transformers 4.x keeps the bound in ``max_pixels``, 5.x in
    ``size.longest_edge`` (a dict or a ``SizeDict``)."""
    if getattr(images, "max_pixels", None) is not None:
        images.max_pixels = min(int(images.max_pixels), cap)
    size = getattr(images, "size", None)
    if isinstance(size, dict):
        size["longest_edge"] = min(int(size.get("longest_edge") or cap), cap)
    elif size is not None and hasattr(size, "longest_edge"):
        size.longest_edge = min(int(size.longest_edge or cap), cap)


def region_crop(image: Image.Image, evidence: Evidence, min_fraction: float = 1 / 3) -> Image.Image | None:
    """A square crop around the largest region (at least ``min_fraction`` of the shorter side), or None."""
    if not evidence.regions:
        return None
    x0, y0, x1, y1 = evidence.regions[0].bbox
    sx, sy = image.size
    if evidence.image_size and tuple(evidence.image_size) != (sx, sy):
        fx, fy = sx / evidence.image_size[0], sy / evidence.image_size[1]
        x0, x1, y0, y1 = x0 * fx, x1 * fx, y0 * fy, y1 * fy
    side = max(x1 - x0, y1 - y0, min(sx, sy) * min_fraction) * 1.25
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(0.0, cx - side / 2), max(0.0, sx - side))
    top = min(max(0.0, cy - side / 2), max(0.0, sy - side))
    return image.crop((int(left), int(top), int(min(sx, left + side)), int(min(sy, top + side))))


def user_text(hint: str | None, question: str) -> str:
    """The text part of the user turn; training builds its dialogues with the same function
    (:mod:`zsad.dialogue.training.instructions`)."""
    return f"Detector evidence: {hint}\n{question}" if hint else question


def build_messages(question: str, evidence: Evidence | None, n_images: int,
                   history: Sequence[tuple[str, str]] = (), understood: Question | None = None) -> list[dict[str, Any]]:
    """Chat messages: earlier turns as text, then images + evidence hint + question in the last user turn; with the
    question ``understood``, the hint also gives the evidence's answer to it."""
    messages: list[dict[str, Any]] = []
    for asked, answered in history:
        messages.append({"role": "user", "content": [{"type": "text", "text": asked}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answered}]})
    hint = lvlm_hint(evidence, understood) if evidence is not None else None
    content = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": user_text(hint, question)})
    messages.append({"role": "user", "content": content})
    return messages


class LvlmResponder:
    """Answers with a Hugging Face vision-language model (optionally with a LoRA adapter)."""

    def __init__(self, model: Any, processor: Any, *, name: str, device: Any = None, dtype: Any = None,
                 max_new_tokens: int = 64, random_weights: bool = False, second_view: bool = True,
                 vocabulary: DefectVocabulary | None = None) -> None:
        import torch

        self.model = model
        self.processor = processor
        self.name = name
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = dtype or next(model.parameters()).dtype
        self.max_new_tokens = max_new_tokens
        self.random_weights = random_weights
        self.second_view = second_view  # add the overlay / region crop as a second image
        self.grounded = GroundedResponder(vocabulary)  # understands questions, refuses, answers on disagreement

    @classmethod
    def load(cls, model: str, *, adapter: str | None = None, device: Any = "auto", precision: str = "auto",
             cache_dir: str | None = None, offline: bool | None = None,
             vocabulary: DefectVocabulary | None = None) -> LvlmResponder:
        """Load ``model`` (a Hub id, a local folder or ``tiny-random``) and optionally a LoRA adapter folder."""
        from zsad.device import resolve_device, resolve_precision

        torch_device = resolve_device(device)
        dtype = resolve_precision(precision, torch_device)
        if is_tiny(model):
            from zsad.dialogue.lvlm.tiny.tiny_lvlm import load_tiny

            net, processor = load_tiny(model)
            random_weights = True
        else:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            folder = resolve_lvlm_dir(model, cache_dir=cache_dir, offline=offline)
            try:
                processor = AutoProcessor.from_pretrained(folder)
                net = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype)
            except (OSError, ValueError) as exc:
                raise WeightsNotFoundError(f"cannot load LVLM from {folder}: {str(exc).splitlines()[0][:300]}") from None
            random_weights = False
        cpu_friendly(net, processor)
        second_view = True
        if adapter is not None:
            from zsad.dialogue.lvlm.lora import load_lora, read_lora_settings

            _, config = read_lora_settings(adapter)
            if config.get("base_model") not in (None, model):
                log.warning("adapter %s was trained on %s, not %s", adapter, config.get("base_model"), model)
            net = load_lora(net, adapter)
            second_view = bool(config.get("second_view", True))  # answer with the views it was trained on
        net = net.to(device=torch_device, dtype=dtype)
        net.eval()
        name = f"lvlm:{model}" + (f"+{Path(adapter).name}" if adapter else "")
        return cls(net, processor, name=name, device=torch_device, dtype=dtype, random_weights=random_weights,
                   second_view=second_view, vocabulary=vocabulary)

    def _inputs(self, messages: list[dict[str, Any]], images: list[Image.Image]) -> dict[str, Any]:
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if images:
            kwargs["images"] = [images]
        batch = self.processor(**kwargs)
        out = {}
        for key, value in batch.items():
            if hasattr(value, "to"):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self.dtype)
            out[key] = value
        return out

    def _views(self, image: Image.Image | None, overlay: Image.Image | None, evidence: Evidence) -> list[Image.Image]:
        """The image, then (if this responder uses it) the overlay or a crop of the largest region."""
        images = [] if image is None else [image.convert("RGB")]
        second = overlay if overlay is not None else (region_crop(image, evidence) if image is not None else None)
        if second is not None and self.second_view:
            images.append(second.convert("RGB"))
        return images

    def _single_token_ids(self, words: Sequence[str]) -> list[int]:
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        ids = set()
        for word in words:
            encoded = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1 and encoded[0] != tokenizer.unk_token_id:
                ids.add(int(encoded[0]))
        return sorted(ids)

    def yes_probability(self, question: str, evidence: Evidence, *, image: Image.Image | None = None,
                        overlay: Image.Image | None = None) -> float | None:
        """``P(yes) / (P(yes) + P(no))`` of the answer's first token (lvlm.md §4.6: an AUROC-able score for a
        yes/no question), summing the single-token spellings ("Yes", " Yes", "yes" ...); None when the tokenizer
        has no single-token yes or no."""
        import torch

        yes, no = (self._single_token_ids(v) for v in (YES_SPELLINGS, NO_SPELLINGS))
        if not yes or not no:
            return None
        images = self._views(image, overlay, evidence)
        understood = self.grounded.understand(question, evidence)
        inputs = self._inputs(build_messages(question, evidence, len(images), understood=understood), images)
        with torch.inference_mode():
            probs = self.model(**inputs).logits[0, -1].float().softmax(-1)
        p_yes, p_no = float(probs[yes].sum()), float(probs[no].sum())
        return p_yes / (p_yes + p_no) if p_yes + p_no > 0 else 0.5

    def generate(self, question: str, evidence: Evidence, *, image: Image.Image | None = None,
                 overlay: Image.Image | None = None, history: Sequence[tuple[str, str]] = (),
                 understood: Question | None = None) -> str:
        """The model's own greedy answer, unchecked."""
        import torch

        images = self._views(image, overlay, evidence)
        inputs = self._inputs(build_messages(question, evidence, len(images), history, understood), images)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         pad_token_id=tokenizer.pad_token_id)
        new = output[0, inputs["input_ids"].shape[1]:]
        return tokenizer.decode(new, skip_special_tokens=True).strip()

    def checked_answer(self, question: str, evidence: Evidence, *, image: Image.Image | None = None,
                       overlay: Image.Image | None = None, history: Sequence[tuple[str, str]] = ()) -> Checked:
        """The answer for the user and what the model said (:mod:`zsad.dialogue.answer.agreement`)."""
        understood = self.grounded.understand(question, evidence, history)
        grounded = self.grounded.reply(understood, evidence)
        if not understood.understood:
            return Checked(grounded)
        said = self.generate(question, evidence, image=image, overlay=overlay, history=history,
                             understood=understood)
        return check(said, understood, evidence, grounded)

    def answer(self, question: str, evidence: Evidence, *, image: Image.Image | None = None,
               overlay: Image.Image | None = None, history: Sequence[tuple[str, str]] = ()) -> str:
        """One greedy answer to ``question`` about ``image`` given the detector's ``evidence``, held to it."""
        return self.checked_answer(question, evidence, image=image, overlay=overlay, history=history).text
