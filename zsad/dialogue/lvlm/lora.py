"""LoRA on the language model of an LVLM only, stored in zsad's adapter folder format (kind ``lvlm-lora``).

Bare name lists and ``"all-linear"`` also adapt the SigLIP / ViT tower (its q/k/v, Qwen2.5-VL's gate/up/down), so
targets are one regex with a negative look-ahead on vision/visual/projector/connector keys (lvlm.md §4.4).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zsad.adapters.folder import load_adapter, read_adapter_config, save_adapter
from zsad.errors import AdapterError

KIND = "lvlm-lora"
#: peft full-matches a string ``target_modules`` against module names.
TARGET_REGEX = (r"^(?!.*(?:vision|visual|projector|connector|multi_modal|mm_proj)).*"
                r"\.(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters; lvlm.md §4.4: r 8-16, alpha = 2r, dropout 0.05."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_regex: str = TARGET_REGEX


def lora_targets(model: Any, target_regex: str = TARGET_REGEX) -> list[str]:
    """Names of the modules the regex selects (what peft will adapt)."""
    pattern = re.compile(target_regex)
    return [name for name, _ in model.named_modules() if name and pattern.fullmatch(name)]


def apply_lora(model: Any, settings: LoraSettings = LoraSettings()) -> Any:
    """Wrap ``model`` in a peft model with fresh LoRA weights on the language model's projections."""
    from peft import LoraConfig, get_peft_model

    if not lora_targets(model, settings.target_regex):
        raise AdapterError("no language-model projection matches the LoRA target pattern; this model family is "
                           "not supported for LoRA")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_regex, bias="none")
    with warnings.catch_warnings():  # peft 0.21 calls a transformers 5 method deprecated in favour of another
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, config)


def save_lora(peft_model: Any, folder: str | Path, *, base_model: str, settings: LoraSettings,
              extra: dict[str, Any] | None = None) -> Path:
    """Write the LoRA weights and their settings as an adapter folder."""
    from peft import get_peft_model_state_dict

    tensors = {name: t for name, t in get_peft_model_state_dict(peft_model).items()}
    config = {"base_model": base_model, "r": settings.r, "alpha": settings.alpha, "dropout": settings.dropout,
              "target_regex": settings.target_regex, **(extra or {})}
    return save_adapter(folder, KIND, config, tensors)


def read_lora_settings(folder: str | Path) -> tuple[LoraSettings, dict[str, Any]]:
    """The settings and the full ``adapter.json`` of a LoRA adapter folder."""
    config = read_adapter_config(folder, KIND)
    try:
        settings = LoraSettings(r=int(config["r"]), alpha=int(config["alpha"]), dropout=float(config["dropout"]),
                                target_regex=str(config["target_regex"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterError(f"{Path(folder) / 'adapter.json'}: bad or missing LoRA field ({exc})") from None
    return settings, config


def load_lora(model: Any, folder: str | Path) -> Any:
    """Wrap ``model`` with the LoRA of ``folder`` and load its weights; every tensor must find its place."""
    from peft import set_peft_model_state_dict

    settings, _ = read_lora_settings(folder)
    adapter = load_adapter(folder, KIND)
    peft_model = apply_lora(model, settings)
    result = set_peft_model_state_dict(peft_model, adapter.tensors)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise AdapterError(f"{folder}: {len(unexpected)} LoRA tensors do not fit this model (e.g. {unexpected[0]}); "
                           "was it trained for another base model?")
    peft_model.eval()
    return peft_model
