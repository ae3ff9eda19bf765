"""Backbones: ``load_backbone(name, ...)`` turns a user-facing name into a frozen :class:`ClipBackbone`."""

from __future__ import annotations

import logging

import torch

from zsad.backbones.clip import ClipBackbone, TokenOutput
from zsad.backbones.names import (
    DEFAULT_BACKBONE,
    RADIO_PREFIX,
    TIMM_PREFIX,
    TINY_RANDOM,
    BackboneSpec,
    parse_backbone_name,
)
from zsad.errors import UsageError, random_weights_message

log = logging.getLogger(__name__)


#: Backbones worth knowing about, for ``zsad models``; any open_clip ViT ``ARCH:TAG`` works too.
KNOWN_BACKBONES: tuple[tuple[str, str], ...] = (
    (DEFAULT_BACKBONE, "OpenAI CLIP ViT-L/14 @336 (default; the published setting of AnomalyCLIP and MuSc)"),
    ("ViT-B-16:openai", "OpenAI CLIP ViT-B/16, faster"),
    ("ViT-B-16-plus-240:laion400m_e32", "OpenCLIP ViT-B/16+ (WinCLIP / AnoVL setting)"),
    ("ViT-L-14-336:random", "the default architecture with random weights (speed benchmarks)"),
    (TINY_RANDOM, "tiny random CLIP (tests and smoke runs; meaningless scores)"),
)


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    image_size: int = 518,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
    offline: bool | None = None,
    pos_interpolation: str = "bicubic",
    activation: str | None = None,
    warn_random: bool = True,
) -> ClipBackbone:
    """Build a frozen backbone in fp32 on ``device``; mixed precision is applied at call time via autocast.

    ``activation`` (``gelu`` / ``quick_gelu``) is the MLP activation of every block; None means the one the weights
    were trained with (:func:`~zsad.backbones.activation.weights_activation`: QuickGELU for OpenAI's, open_clip
    #771). ``auto`` is a per-method choice, resolved before this call (``Method.activation_for``).
    Random weights log a warning unless ``warn_random=False`` (the CLI prints its own).
    """
    if name.strip().startswith(RADIO_PREFIX):  # RADIO v2.5 (AnomalyVFM's backbone): zsad.backbones.radio
        from zsad.backbones.radio import load_radio_backbone

        return load_radio_backbone(name.strip(), image_size=image_size, device=device, cache_dir=cache_dir,
                                   offline=offline, activation=activation, pos_interpolation=pos_interpolation,
                                   warn_random=warn_random)
    if name.strip().startswith(TIMM_PREFIX):  # vision-only timm models (DINOv2, DINOv3): zsad.backbones.timm
        from zsad.backbones.timm import load_timm_backbone

        return load_timm_backbone(name, image_size=image_size, device=device, cache_dir=cache_dir, offline=offline,
                                  activation=activation, warn_random=warn_random,  # their own activation (GELU)
                                  pos_interpolation=pos_interpolation)
    from zsad.backbones.dinov2_hub import DINOV2_HUB

    if pos_interpolation == DINOV2_HUB:
        raise UsageError(f"backbone '{name}' is a CLIP model; this method runs DINOv2 as its hub model does: use a "
                         f"timm DINOv2 backbone, e.g. timm:vit_small_patch14_dinov2.lvd142m")
    import open_clip

    from zsad import weights
    from zsad.backbones.activation import QUICK_GELU, check_activation, weights_activation

    if activation is not None:
        check_activation(activation, allow_auto=False)
    spec = parse_backbone_name(name)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    if spec.kind == "tiny":
        from zsad.backbones.tiny import build_tiny_clip

        model, tokenizer = build_tiny_clip(), open_clip.get_tokenizer("ViT-B-16")
    elif spec.kind == "hf-hub":
        folder = weights.resolve_hf_hub_dir(spec.source, cache_dir=cache_dir, offline=offline)
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        mean, std = _mean_std(preprocess, mean, std)
    else:
        if spec.arch not in open_clip.list_models():
            raise UsageError(f"unknown backbone architecture '{spec.arch}' (see `zsad models` or open_clip.list_models())")
        quick_gelu = weights_activation(spec) == QUICK_GELU  # the weights' own; ``activation`` may replace it
        checkpoint = None
        if spec.kind == "tag":
            cfg = open_clip.get_pretrained_cfg(spec.arch, spec.source)
            checkpoint = weights.resolve_tag_checkpoint(spec.arch, spec.source, cache_dir=cache_dir, offline=offline)
            mean, std = cfg.get("mean", mean), cfg.get("std", std)
        elif spec.kind == "file":
            checkpoint = weights.check_weights_file(spec.source)
        try:
            model = open_clip.create_model(spec.arch, pretrained=checkpoint, force_quick_gelu=quick_gelu)
        except (RuntimeError, KeyError) as exc:
            raise UsageError(f"could not load backbone '{name}': {str(exc).splitlines()[0][:300]}") from exc
        tokenizer = open_clip.get_tokenizer(spec.arch)
    if spec.random_weights and warn_random:
        log.warning(random_weights_message(name))
    backbone = ClipBackbone(model, tokenizer, spec, image_size, mean, std, pos_interpolation, activation)
    return backbone.to(device)


def _mean_std(preprocess, mean, std):
    for t in getattr(preprocess, "transforms", []):
        if hasattr(t, "mean") and hasattr(t, "std"):
            return tuple(t.mean), tuple(t.std)
    return mean, std


__all__ = [
    "BackboneSpec",
    "ClipBackbone",
    "DEFAULT_BACKBONE",
    "KNOWN_BACKBONES",
    "TINY_RANDOM",
    "TokenOutput",
    "load_backbone",
    "parse_backbone_name",
]
