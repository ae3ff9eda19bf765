"""Convert the released AnomalyCLIP checkpoints (``{"prompt_learner": state_dict}``, zqhang/AnomalyCLIP
``checkpoints/*/epoch_15.pth``) into an ``anomalyclip-prompts`` adapter folder, values unchanged.

Official key -> adapter tensor (layout of ``AnomalyCLIP_PromptLearner``, one class, one sentence per state):

    ctx_pos                   [1, 1, E, W]   -> ctx_normal     [E, W]   ("pos" is the *normal* prompt)
    ctx_neg                   [1, 1, E, W]   -> ctx_anomalous  [E, W]
    compound_prompts_text.k   [T, W]         -> deep_prompts[k]          (k = 0 .. depth-2)
    compound_prompt_projections.k.*          dropped: never used by the forward pass
    token_prefix_* / token_suffix_*          dropped: frozen token embeddings, recomputed from the backbone
    tokenized_prompts_*       [1, 1, 77]     checked against our tokenisation of the two prompts, then dropped

The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, never code.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import torch

from zsad.backbones.names import DEFAULT_BACKBONE
from zsad.errors import AdapterError
from zsad.methods.anomalyclip.adapter import PromptSettings, save_prompt_adapter
from zsad.methods.anomalyclip.prompts import _PLACEHOLDER, STATE_WORDS, PromptLearner, PromptShape

#: The setting the released checkpoints were trained and tested with (``train.sh`` / ``test.sh``).
RELEASED_IMAGE_SIZE = 518
RELEASED_TAPS = (23,)  # layer 24 of 24, 0-based
RELEASED_DPAM_LAYERS = 19  # DPAM_layer=20
RELEASED_LOCAL_WEIGHT = 4.0

_DEEP = re.compile(r"^compound_prompts_text\.(\d+)$")
_DROPPED = re.compile(r"^(compound_prompt_projections\.\d+\.(weight|bias)|token_(prefix|suffix)_(pos|neg))$")
_TOKENIZED = ("tokenized_prompts_pos", "tokenized_prompts_neg")


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The prompt-learner state dict of an official checkpoint; a pickled object other than tensors and
    plain containers is refused (nothing in the file is executed)."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise AdapterError(f"{path}: refused: the checkpoint holds a Python object ({found.group(1)}) besides "
                               f"tensors, and zsad never unpickles objects (torch.load weights_only=True)") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
        raise AdapterError(f"{path}: not a readable PyTorch checkpoint of tensors "
                           f"({detail.group(1).strip() if detail else type(exc).__name__})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise AdapterError(f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0][:200]})") from None
    state = obj.get("prompt_learner", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or "ctx_pos" not in state:
        raise AdapterError(f"{path}: not an AnomalyCLIP checkpoint: expected {{'prompt_learner': state_dict}} with "
                           f"'ctx_pos', 'ctx_neg' and 'compound_prompts_text.N'")
    return state


def _context(state: dict[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    tensor = state.get(key)
    if not isinstance(tensor, torch.Tensor):
        raise AdapterError(f"{where}: '{key}' is missing")
    if tensor.dim() == 4:
        if tensor.shape[:2] != (1, 1):
            raise AdapterError(f"{where}: '{key}' has shape {list(tensor.shape)}: class-specific or multi-sentence "
                               f"prompts are not supported (expected [1, 1, E, W])")
        tensor = tensor[0, 0]
    if tensor.dim() != 2:
        raise AdapterError(f"{where}: '{key}' has shape {list(tensor.shape)}, expected [1, 1, E, W]")
    return tensor


def convert_state_dict(state: dict[str, torch.Tensor], where: str = "checkpoint",
                       round_deep_fp16: bool = True) -> tuple[PromptShape, dict[str, torch.Tensor], list[str]]:
    """Official state dict -> (prompt sizes, adapter tensors, dropped keys). Unknown keys are refused so a
    checkpoint of another prompt learner (AdaCLIP, FAPrompt, ...) is not half-read."""
    ctx_normal = _context(state, "ctx_pos", where)
    ctx_anomalous = _context(state, "ctx_neg", where)
    if ctx_normal.shape != ctx_anomalous.shape:
        raise AdapterError(f"{where}: 'ctx_pos' {list(ctx_normal.shape)} and 'ctx_neg' {list(ctx_anomalous.shape)} differ")
    n_ctx, width = (int(s) for s in ctx_normal.shape)
    deep: dict[int, torch.Tensor] = {}
    dropped, unknown = [], []
    for key, value in state.items():
        match = _DEEP.match(key)
        if match:
            deep[int(match.group(1))] = value
        elif _DROPPED.match(key) or key in _TOKENIZED:
            dropped.append(key)
        elif key not in ("ctx_pos", "ctx_neg"):
            unknown.append(key)
    if unknown:
        raise AdapterError(f"{where}: unexpected keys {sorted(unknown)[:8]}: not the AnomalyCLIP prompt learner")
    if sorted(deep) != list(range(len(deep))):
        raise AdapterError(f"{where}: compound_prompts_text indices {sorted(deep)} are not 0..{len(deep) - 1}")
    deep_length = int(deep[0].shape[0]) if deep else 1
    for k, value in deep.items():
        if tuple(value.shape) != (deep_length, width):
            raise AdapterError(f"{where}: 'compound_prompts_text.{k}' has shape {list(value.shape)}, "
                               f"expected [{deep_length}, {width}]")
    stacked = torch.stack([deep[k] for k in range(len(deep))]) if deep else torch.zeros(0, deep_length, width)
    _check_tokenized(state, n_ctx, where)
    shape = PromptShape(n_ctx=n_ctx, deep_length=deep_length, deep_depth=len(deep) + 1,
                        round_deep_fp16=round_deep_fp16)
    tensors = {"ctx_normal": ctx_normal.float().clone(), "ctx_anomalous": ctx_anomalous.float().clone(),
               "deep_prompts": stacked.float().clone()}
    PromptLearner.from_tensors(shape, tensors, where)  # shape self-check
    return shape, tensors, sorted(dropped)


def _check_tokenized(state: dict[str, torch.Tensor], n_ctx: int, where: str) -> None:
    """The checkpoint's token ids must be our two prompts: guards against other prompt words."""
    from open_clip.tokenizer import tokenize

    placeholder = " ".join([_PLACEHOLDER] * n_ctx)
    for key, words in zip(_TOKENIZED, STATE_WORDS):
        if key not in state:
            continue
        got = state[key].reshape(-1, state[key].shape[-1])[0].long()
        expected = tokenize([f"{placeholder} {words}"], context_length=int(got.shape[0]))[0].long()
        if not torch.equal(got, expected):
            raise AdapterError(f"{where}: '{key}' is not the prompt '{placeholder} {words}': the checkpoint was "
                               f"trained with other prompt words, which zsad does not support")


def import_checkpoint(checkpoint: str | Path, out: str | Path, *, backbone: str = DEFAULT_BACKBONE,
                      trained_on: str | None = None, image_size: int = RELEASED_IMAGE_SIZE) -> Path:
    """Write the adapter folder ``out`` from an official checkpoint; returns ``out``."""
    checkpoint = Path(checkpoint)
    state = read_checkpoint(checkpoint)
    shape, tensors, dropped = convert_state_dict(state, str(checkpoint))
    learner = PromptLearner.from_tensors(shape, tensors, str(checkpoint))
    settings = PromptSettings(backbone=backbone, image_size=image_size, taps=RELEASED_TAPS,
                              dpam_layers=RELEASED_DPAM_LAYERS, shape=shape, local_weight=RELEASED_LOCAL_WEIGHT,
                              activation="quick_gelu")  # AnomalyCLIP_lib/AnomalyCLIP.py: QuickGELU in every block
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    source = {"kind": "imported", "format": "zqhang/AnomalyCLIP prompt_learner", "file": checkpoint.name,
              "sha256": digest, "dropped_keys": dropped}
    training = {"data": trained_on or "unknown (imported checkpoint; see adapters/README.md)",
                "note": "official training: 15 epochs, lr 1e-3, batch 8, 518 px, taps [24], lambda 4"}
    return save_prompt_adapter(out, learner, settings, training=training, source=source)
