"""The DINOv2, DINOv3 and CLIP checkpoints of AnomalyVFM mapped onto zsad's timm and open_clip modules.

Official layouts (MaticFuc/AnomalyVFM; keys after the wrapper's ``net.``):

- DINOv2 (``models/dinov2.py``: the hub's ``dinov2_vitl14_reg``; ``add_peft(self.net.blocks)``): the DINOv2 release
  layout (``cls_token``, ``register_tokens``, ``pos_embed`` with the class position, ``mask_token``,
  ``patch_embed.proj``, ``blocks.{i}.{norm1, attn, ls1, norm2, mlp, ls2}``, ``norm``) with ``blocks.{i}.attn.qkv``
  and ``.proj`` wrapped (``.layer.weight`` + DoRA tensors). timm's own converter
  (``timm.models.vision_transformer.checkpoint_filter_fn``) turns the release layout into
  ``vit_*_patch14_reg4_dinov2``'s (the class position folded into the class token), so zsad stores timm's layout.
- DINOv3 (``models/dinov3.py``: the hub's ``dinov3_vitl16``; the same ``add_peft``): the release layout
  (``storage_tokens``, ``rope_embed.periods``, ``blocks.{i}.attn.qkv.{weight, bias, bias_mask}``, ``ls1.gamma`` …)
  through timm's Eva converter onto ``vit_*_patch16_dinov3_qkvb`` (the k bias must be zero: :mod:`.families`).
- CLIP (``models/clip.py``: Hugging Face ``CLIPVisionModel``; ``add_peft_clip`` wraps every ``q_proj``, ``v_proj``
  and ``out_proj``): ``embeddings.{class_embedding, patch_embedding, position_embedding}``, ``pre_layrnorm``,
  ``encoder.layers.{i}.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}``,
  ``post_layernorm``. open_clip fuses q, k, v into ``in_proj_weight``; DoRA normalises each output row, so adapting
  ``q_proj`` and ``v_proj`` is adapting the q and v row blocks of the fused weight (zsad's ``DoraQkv``). The frozen
  tower is OpenAI's ViT-L/14-336, which open_clip loads itself (``ViT-L-14-336:openai``): the importer checks every
  key and shape of the checkpoint's tower against open_clip's and stores nothing of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from zsad.backbones.names import TINY_RANDOM
from zsad.errors import AdapterError
from zsad.methods.vfm.adapter import check_tensors

DORA_QKV = ("lora_A_q", "lora_B_q", "lora_A_v", "lora_B_v", "mag_q", "mag_v")
DORA_PROJ = ("lora_A", "lora_B", "magnitude")
_CLIP_WRAPPED = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.(q_proj|v_proj|out_proj)\.(.+)$")
_TIMM_WRAPPED = re.compile(r"^blocks\.(\d+)\.attn\.(qkv|proj)\.(.+)$")
#: DINOv2 with registers in timm, by (width, depth); the tiny one is zsad's test model
DINOV2_ARCHS = {(384, 12): "vit_small_patch14_reg4_dinov2.lvd142m", (768, 12): "vit_base_patch14_reg4_dinov2.lvd142m",
                (1024, 24): "vit_large_patch14_reg4_dinov2.lvd142m", (1536, 40): "vit_giant_patch14_reg4_dinov2.lvd142m"}
#: DINOv3 in timm (with q/v biases; the k part is zero), by (width, depth); the tiny one is zsad's test model
DINOV3_ARCHS = {(192, 12): "vit_tiny_patch16_dinov3_qkvb", (384, 12): "vit_small_patch16_dinov3_qkvb.lvd1689m", (768, 12): "vit_base_patch16_dinov3_qkvb.lvd1689m",
                (1024, 24): "vit_large_patch16_dinov3_qkvb.lvd1689m"}
#: open_clip towers of the official CLIP (``openai/clip-vit-large-patch14-336``), by (width, depth, positions)
CLIP_ARCHS = {(1024, 24, 577): "ViT-L-14-336:openai"}


@dataclass
class Converted:
    """A checkpoint's backbone in zsad's terms: its name, the adapter tensors, and backbone tensors to store."""

    backbone: str
    width: int
    depth: int
    dora: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor] | None  # None: the backbone comes from its own release


def family_of_checkpoint(net: dict[str, torch.Tensor]) -> str:
    """``radio``, ``dinov2``, ``clip``, ``dinov3`` or ``siglip2`` from the keys of the official wrapper's ``net``."""
    keys = set(net)
    if "model.patch_generator.embedder.weight" in keys:
        return "radio"
    if "storage_tokens" in keys or any(k.startswith("rope_embed.") for k in keys):
        return "dinov3"
    if "head.probe" in keys or any(k.startswith("head.attention.") for k in keys):
        return "siglip2"
    if "register_tokens" in keys or "patch_embed.proj.weight" in keys:
        return "dinov2"
    if "embeddings.class_embedding" in keys:
        return "clip"
    raise AdapterError(f"not an AnomalyVFM checkpoint of a backbone zsad knows (first key {sorted(keys)[0]!r})")


#: official wrapped-linear name -> {official adapter tensor: (zsad target, zsad tensor)}
TIMM_DORA = {"qkv": {n: ("qkv", n) for n in DORA_QKV}, "proj": {n: ("proj", n) for n in DORA_PROJ}}
CLIP_DORA = {"q_proj": {"lora_A": ("qkv", "lora_A_q"), "lora_B": ("qkv", "lora_B_q"), "magnitude": ("qkv", "mag_q")},
             "v_proj": {"lora_A": ("qkv", "lora_A_v"), "lora_B": ("qkv", "lora_B_v"), "magnitude": ("qkv", "mag_v")},
             "out_proj": {n: ("proj", n) for n in DORA_PROJ}}


def split_wrapped(net: dict, pattern: re.Pattern, names: dict[str, dict[str, tuple[str, str]]],
                  path: Path) -> tuple[dict, dict]:
    """(unwrapped backbone tensors, zsad ``dora.blocks.…`` tensors) of a checkpoint whose DoRA-wrapped linears match
    ``pattern`` as (block, wrapped linear, rest): ``rest`` is ``layer.*`` (the frozen tensor, unwrapped) or an adapter
    tensor named in ``names``."""
    base: dict = {}
    dora: dict = {}
    for key, value in net.items():
        found = pattern.match(key)
        if not found:
            base[key] = value
            continue
        block, which, rest = found.groups()
        if rest.startswith("layer."):
            base[key[:len(key) - len(rest)] + rest[len("layer."):]] = value
        elif rest in names[which]:
            target, name = names[which][rest]
            dora[f"dora.blocks.{block}.{target}.{name}"] = value
        elif rest in ("weight", "bias"):
            raise AdapterError(f"{path}: {key!r} is not wrapped by an adapter: a checkpoint without DoRA (zsad "
                               f"imports AnomalyVFM's DoRA checkpoints only)")
        else:
            raise AdapterError(f"{path}: unexpected adapter tensor {key!r} (zsad imports DoRA; LoRA and VPT "
                               f"checkpoints are not supported)")
    if not dora:
        raise AdapterError(f"{path}: no DoRA tensors found (lora_A_q ... magnitude)")
    return base, dora


def _strict_load(model: torch.nn.Module, state: dict, path: Path, what: str, *, load: bool = True) -> None:
    """Every key and shape of ``state`` against ``model``'s, then (``load``) the values into it."""
    check_tensors(model.state_dict(), state, str(path), f"the {what} tensors")
    if load:
        model.load_state_dict({k: v.float() for k, v in state.items()})


def convert_dinov2(net: dict, path: Path) -> Converted:
    """A DINOv2-with-registers checkpoint onto timm's ``vit_*_patch14_reg4_dinov2`` (or zsad's tiny DINOv2)."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    from zsad.backbones.names import TIMM_PREFIX, TINY_DINO
    from zsad.backbones.tiny_dino import build_tiny_dino

    base, dora = split_wrapped(net, _TIMM_WRAPPED, TIMM_DORA, path)
    for needed in ("patch_embed.proj.weight", "register_tokens"):
        if needed not in base:
            raise AdapterError(f"{path}: a DINOv2 checkpoint without {needed!r} (the official backbone is "
                               f"dinov2_vitl14_reg)")
    width = int(base["patch_embed.proj.weight"].shape[0])
    depth = len({k.split(".")[1] for k in base if k.startswith("blocks.")})
    registers = int(base["register_tokens"].shape[1])
    arch = DINOV2_ARCHS.get((width, depth))
    if arch is not None and registers == 4:
        model = timm.create_model(arch, pretrained=False, num_classes=0)
        name = f"{TIMM_PREFIX}{arch}"
    elif (width, depth) == (64, 6):  # zsad's tiny test model
        model = build_tiny_dino(reg_tokens=registers)
        name = f"{TIMM_PREFIX}{TINY_DINO}:random"
    else:
        raise AdapterError(f"{path}: a DINOv2 of width {width}, depth {depth} and {registers} registers is none zsad "
                           f"knows (ViT-S/B/L/g with 4 registers)")
    try:
        state = checkpoint_filter_fn(dict(base), model)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise AdapterError(f"{path}: the DINOv2 tensors do not convert to timm's layout ({exc})") from None
    _strict_load(model, state, path, "DINOv2")
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return Converted(name, width, depth, dora, weights)


def convert_dinov3(net: dict, path: Path) -> Converted:
    """A DINOv3 checkpoint (4 storage tokens, RoPE) onto timm's ``vit_*_patch16_dinov3_qkvb`` (Eva)."""
    import timm
    from timm.models.eva import checkpoint_filter_fn

    from zsad.backbones.names import TIMM_PREFIX

    base, dora = split_wrapped(net, _TIMM_WRAPPED, TIMM_DORA, path)
    if "patch_embed.proj.weight" not in base:
        raise AdapterError(f"{path}: a DINOv3 checkpoint without 'patch_embed.proj.weight'")
    width = int(base["patch_embed.proj.weight"].shape[0])
    depth = len({k.split(".")[1] for k in base if k.startswith("blocks.")})
    arch = DINOV3_ARCHS.get((width, depth))
    if arch is None or int(base.get("storage_tokens", torch.zeros(1, 0)).shape[1]) != 4:
        raise AdapterError(f"{path}: a DINOv3 of width {width} and depth {depth} is none zsad knows (ViT-S/B/L/16 "
                           f"with 4 storage tokens)")
    for key, value in base.items():  # the official DoRA wrapper adds the unmasked bias; timm's k part is zero
        if key.endswith("attn.qkv.bias") and bool(value.chunk(3)[1].abs().max() > 0):
            raise AdapterError(f"{path}: {key!r} has a non-zero k part, which AnomalyVFM's DoRA wrapper applies "
                               f"unmasked and timm's DINOv3 cannot hold")
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    state = checkpoint_filter_fn(dict(base), model)
    _strict_load(model, state, path, "DINOv3")
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return Converted(f"{TIMM_PREFIX}{arch}", width, depth, dora, weights)


def convert_clip(net: dict, path: Path) -> Converted:
    """A Hugging Face CLIP vision-tower checkpoint onto open_clip's tower (checked, not stored)."""
    base, dora = split_wrapped(net, _CLIP_WRAPPED, CLIP_DORA, path)
    visual = hf_clip_to_open_clip(base, path)
    width = int(visual["conv1.weight"].shape[0])
    depth = len({k.split(".")[2] for k in visual if k.startswith("transformer.resblocks.")})
    positions = int(visual["positional_embedding"].shape[0])
    name = CLIP_ARCHS.get((width, depth, positions))
    if name is None and (width, depth) == (64, 6):
        name = TINY_RANDOM  # zsad's tiny test CLIP
    if name is None:
        raise AdapterError(f"{path}: a CLIP vision tower of width {width}, depth {depth} and {positions} positions is "
                           f"not the official ViT-L/14-336")
    _strict_load(_open_clip_visual(name), visual, path, "CLIP vision", load=False)
    return Converted(name, width, depth, dora, None)


def hf_clip_to_open_clip(base: dict, path: Path) -> dict[str, torch.Tensor]:
    """Hugging Face ``CLIPVisionTransformer`` tensors -> open_clip ``VisionTransformer`` tensors (q, k, v fused)."""
    out: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, torch.Tensor]] = {}
    simple = {"embeddings.class_embedding": "class_embedding", "embeddings.patch_embedding.weight": "conv1.weight",
              "embeddings.position_embedding.weight": "positional_embedding", "pre_layrnorm.weight": "ln_pre.weight",
              "pre_layrnorm.bias": "ln_pre.bias", "post_layernorm.weight": "ln_post.weight",
              "post_layernorm.bias": "ln_post.bias"}
    inner = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    for key, value in base.items():
        if key in simple:
            out[simple[key]] = value
        elif key == "embeddings.position_ids":  # a buffer some transformers versions save
            continue
        elif key.startswith("encoder.layers."):
            _, _, block, rest = key.split(".", 3)
            module, param = rest.rsplit(".", 1)
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                layers.setdefault(block, {})[f"{module[-6]}.{param}"] = value
            elif module in inner:
                out[f"transformer.resblocks.{block}.{inner[module]}.{param}"] = value
            else:
                raise AdapterError(f"{path}: unexpected CLIP tensor {key!r}")
        else:
            raise AdapterError(f"{path}: unexpected CLIP tensor {key!r}")
    for block, parts in layers.items():
        for param, fused in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
            found = [parts.get(f"{x}.{param}") for x in "qkv"]
            if any(t is None for t in found):
                which = "qkv"[[t is None for t in found].index(True)]
                raise AdapterError(f"{path}: CLIP layer {block} has no {which}_proj {param}")
            if len({tuple(t.shape) for t in found}) != 1:
                raise AdapterError(f"{path}: CLIP layer {block}'s q/k/v_proj {param}s have shapes "
                                   f"{[tuple(t.shape) for t in found]} (one shape expected)")
            out[f"transformer.resblocks.{block}.attn.{fused}"] = torch.cat(found)
    return out


def _open_clip_visual(name: str) -> torch.nn.Module:
    """open_clip's vision tower of ``name`` without its ``proj`` (the official vision model has none), on the meta
    device (only the keys and shapes are needed) except the tiny one."""
    import open_clip

    from zsad.backbones.tiny import build_tiny_clip

    if name == TINY_RANDOM:
        visual = build_tiny_clip().visual
    else:
        with torch.device("meta"):
            visual = open_clip.create_model(name.split(":")[0], pretrained=None).visual
    visual.proj = None
    return visual
