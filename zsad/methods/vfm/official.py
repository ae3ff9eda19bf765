"""Importing AnomalyVFM's released checkpoints into an adapter folder (``zsad adapters import-anomalyvfm``).

Two layouts (MaticFuc/AnomalyVFM): ``model.pkl`` written by ``train.py`` (``model_state_dict`` of the backbone
wrapper, keys ``net.…``; ``decoder_state_dict``; ``predictor_state_dict``) and the Hub release's
``model.safetensors`` (``hf_model.py``'s ``AnomalyVFM``: ``model.net.…``, ``decoder.…``, ``predictor.…``). Both
hold the whole model: the frozen backbone weights (under each wrapped layer's ``.layer``), the DoRA tensors, the
decoder and the head. Files are read as tensors only (safetensors, or ``torch.load(weights_only=True)``); keys or
shapes that do not fit are refused in one line.

Backbone families (:mod:`.families`), told apart by their keys: RADIO (here: ``lora_A_q`` … ``mag_v`` on ``qkv``,
``lora_A`` / ``lora_B`` / ``magnitude`` on ``proj``), DINOv2 with registers, DINOv3 and CLIP (:mod:`.official_vit`).
SigLIP2 checkpoints are refused with the reason (:data:`.families.UNMAPPED`).

The folder gets the DoRA tensors, decoder and head (``weights.safetensors``) and, unless ``with_backbone`` is off,
the backbone weights in zsad's layout (``backbone.safetensors``: RADIO's, about 1.2 GB for ViT-L; timm's for
DINOv2 and DINOv3): score with ``--backbone radio:v2.5-l:DIR/backbone.safetensors`` (or
``timm:vit_large_patch14_reg4_dinov2.lvd142m:DIR/backbone.safetensors``, as the import prints). Without it, the
backbone comes from its own release (``radio:v2.5-l``: ``nvidia/RADIO-L``; timm's
``vit_large_patch14_reg4_dinov2.lvd142m`` / ``vit_large_patch16_dinov3_qkvb.lvd1689m``; CLIP always from
``ViT-L-14-336:openai``) in the Hugging Face cache; AnomalyVFM trains with the backbone frozen, so both are the same
weights up to the precision they were stored in.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from zsad.errors import AdapterError
from zsad.fileio import atomic_dir
from zsad.methods.vfm.adapter import BACKBONE_WEIGHTS, KIND, VfmModules, VfmSettings
from zsad.methods.vfm.families import FAMILIES, UNMAPPED
from zsad.methods.vfm.official_vit import (
    TIMM_DORA,
    Converted,
    convert_clip,
    convert_dinov2,
    convert_dinov3,
    family_of_checkpoint,
    split_wrapped,
)

_WRAPPED = re.compile(r"^model\.blocks\.(\d+)\.attn\.(qkv|proj)\.(.+)$")


def read_checkpoint(path: str | Path) -> tuple[dict, dict, dict]:
    """(backbone wrapper's tensors without their ``net.`` prefix, decoder's, head's) of either official layout."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            flat = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise AdapterError(f"{path}: not a readable safetensors file ({exc})") from None
        groups = _split(flat, {"model.net.": "net", "decoder.": "decoder", "predictor.": "predictor"}, path)
        return groups["net"], groups["decoder"], groups["predictor"]
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types; all mean "not tensors only"
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise AdapterError(f"{path}: cannot be read as tensors only (weights_only=True): {first}") from None
    names = ("model_state_dict", "decoder_state_dict", "predictor_state_dict")
    if not isinstance(data, dict) or not all(isinstance(data.get(n), dict) for n in names):
        raise AdapterError(f"{path}: not an AnomalyVFM checkpoint (expected a dict with {', '.join(names)})")
    model = _split(dict(data["model_state_dict"]), {"net.": "net"}, path)["net"]
    return model, dict(data["decoder_state_dict"]), dict(data["predictor_state_dict"])


def _split(state: dict, prefixes: dict[str, str], path: Path) -> dict[str, dict]:
    groups: dict[str, dict] = {name: {} for name in prefixes.values()}
    for key, value in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            raise AdapterError(f"{path}: unexpected tensor {key!r} (not an AnomalyVFM checkpoint; expected keys "
                               f"under {', '.join(prefixes)})")
        groups[prefixes[prefix]][key[len(prefix):]] = value
    return groups


def split_adapters(net: dict, path: Path) -> tuple[dict, dict]:
    """The wrapper's tensors as (plain RADIO tensors in the official layout, zsad's ``dora.blocks.…`` tensors)."""
    return split_wrapped(net, _WRAPPED, TIMM_DORA, path)


def _arch(width: int, depth: int, path: Path) -> str:
    from zsad.backbones.radio import CONFIGS

    for name, config in CONFIGS.items():
        if (config.width, config.depth) == (width, depth):
            return name
    raise AdapterError(f"{path}: a RADIO of width {width} and depth {depth} is none zsad knows "
                       f"({', '.join(f'{n}: {c.width}x{c.depth}' for n, c in CONFIGS.items())})")


def convert_radio(net: dict, path: Path) -> Converted:
    """A RADIO checkpoint onto zsad's RADIO (:mod:`zsad.backbones.radio`)."""
    from zsad.backbones.radio import build_radio, load_state, to_zsad_layout

    base, dora = split_adapters(net, path)
    state, conditioner, unknown = to_zsad_layout(base)
    if unknown:
        raise AdapterError(f"{path}: unexpected tensor {unknown[0]!r} ({len(unknown)} tensors zsad does not know)")
    if "patch_embed.weight" not in state:
        raise AdapterError(f"{path}: no RADIO patch embedding (model.patch_generator.embedder.weight)")
    width = int(state["patch_embed.weight"].shape[0])
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    arch = _arch(width, depth, path)
    model = build_radio(arch)
    try:
        load_state(model, state, str(path))
    except Exception as exc:  # a UsageError from the shape checks: the file is at fault, so say it as such
        raise AdapterError(str(exc)) from None
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for key in ("norm_mean", "norm_std"):
        if key in conditioner:
            weights[f"input_conditioner.{key}"] = conditioner[key].float().contiguous()
    return Converted(f"radio:{arch}" if arch != "tiny" else "radio:tiny:random", width, depth, dora, weights)


_CONVERTERS = {"radio": convert_radio, "dinov2": convert_dinov2, "clip": convert_clip, "dinov3": convert_dinov3}


def import_checkpoint(path: str | Path, out: str | Path, *, image_size: int | None = None, with_backbone: bool = True,
                      trained_on: str | None = None) -> Path:
    """Convert an official checkpoint into the adapter folder ``out`` (written whole, atomically);
    ``image_size`` None: the family's official input size (768 RADIO, 672 DINOv2 and CLIP)."""
    from safetensors.torch import save_file

    from zsad.adapters.folder import write_adapter_files

    path = Path(path)
    net, decoder, predictor = read_checkpoint(path)
    try:
        family = family_of_checkpoint(net)
    except AdapterError as exc:
        raise AdapterError(f"{path}: {exc}") from None
    if family in UNMAPPED:
        raise AdapterError(f"{path}: an AnomalyVFM {family} checkpoint, which zsad does not import: {UNMAPPED[family]}")
    converted = _CONVERTERS[family](net, path)
    dora = converted.dora
    ranks = {int(v.shape[0]) for k, v in dora.items() if k.endswith(("lora_A", "lora_A_q", "lora_A_v"))}
    if len(ranks) != 1:
        raise AdapterError(f"{path}: the DoRA tensors have ranks {sorted(ranks)}; one rank expected")
    summary_dim = int(predictor["lin.weight"].shape[1]) if "lin.weight" in predictor else -1
    store = with_backbone and converted.weights is not None
    settings = VfmSettings(backbone=converted.backbone, image_size=image_size or FAMILIES[family].image_size,
                           depth=converted.depth, width=converted.width, summary_dim=summary_dim, rank=ranks.pop(),
                           backbone_weights=BACKBONE_WEIGHTS if store else None)
    tensors = {**dora, **{f"decoder.{k}": v for k, v in decoder.items()},
               **{f"head.{k[len('lin.'):]}": v for k, v in predictor.items() if k.startswith("lin.")}}
    if any(not k.startswith("lin.") for k in predictor):
        raise AdapterError(f"{path}: unexpected head tensor {next(k for k in predictor if not k.startswith('lin.'))!r}")
    VfmModules.from_tensors(settings, tensors, str(path))  # every key and shape checked before anything is written
    source = {"kind": "anomalyvfm-official", "family": family, "file": path.name,
              "layout": "hub" if path.suffix == ".safetensors" else "train.py",
              **({"trained_on": trained_on} if trained_on else {})}
    config = {**settings.to_config(), "training": {}, "source": source, "metrics": {}}
    with atomic_dir(out) as folder:
        write_adapter_files(folder, KIND, config, {k: v.float() for k, v in tensors.items()})
        if store:
            save_file(converted.weights, str(folder / BACKBONE_WEIGHTS))
    return Path(out)


def scoring_backbone(settings: VfmSettings, folder: Path) -> str:
    """The ``--backbone`` that scores with an imported folder: its stored backbone file when it has one
    (``radio:ARCH:FILE``, ``timm:ARCH:FILE``), else the backbone it records."""
    if not settings.backbone_weights:
        return settings.backbone
    prefix, arch = settings.backbone.split(":")[:2]
    return f"{prefix}:{arch}:{folder / settings.backbone_weights}"
