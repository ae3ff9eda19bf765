"""Vision-only timm backbones (DINOv2, DINOv3, ...) behind the same ``tokens`` call as :class:`ClipBackbone`.

Why: MuSc's best localisation comes from DINOv2 (MVTec AD pixel AUROC 98.3 / PRO 96.2 with ViT-L/14 at 518 against
97.1 / 93.5 with CLIP), and reference-guided scoring needs no text at all. These models have no text tower, so the
methods that compare images with sentences refuse them (:func:`vision_only_message`).

What matches the official MuSc DINOv2 path (xrli-U/MuSc ``models/musc.py``): patch tokens of the chosen 0-based
blocks with the final LayerNorm applied (DINOv2's ``get_intermediate_layers(norm=True)``; here timm's
``forward_intermediates(norm=True)``), a zero "class token" put in front so MuSc's usual drop of token 0 leaves the
patches, register tokens removed, ImageNet mean/std, bilinear squash-resize, and the final normed class token (not
L2-normalised) as the image feature for RsCIN.

Input size: position embeddings are made for ``image_size`` when the model is built; pretrained ones are resampled
by timm's checkpoint filter (bicubic). DINOv2 was released at 518 (37 x 37 patches of 14), so 518 needs no
resampling. DINOv3 uses patch 16 and rotary position embeddings: any multiple of 16 works; zsad suggests 512
(32 x 32 patches), the multiple of 16 nearest MuSc's 518, so the pixel resolution stays MuSc's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from PIL import Image
from torch import nn

from zsad.backbones.base import Backbone, TokenOutput
from zsad.backbones.dinov2_hub import DINOV2_HUB, hub_tokens
from zsad.backbones.names import TIMM_PREFIX, TINY_DINO, BackboneSpec, parse_backbone_name
from zsad.errors import UsageError, random_weights_message

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: What to say after "On a connected machine run ...", for a timm backbone.
TIMM_ADVICE = ("pass a local file as --backbone timm:MODEL:/path/to/weights (a timm state dict or the original "
               "release's .pth). For a smoke run without weights use --backbone timm:MODEL:random.")

#: Vision-only backbones worth knowing about, for ``zsad models``.
KNOWN_TIMM_BACKBONES: tuple[tuple[str, str], ...] = (
    ("timm:vit_large_patch14_dinov2.lvd142m", "DINOv2 ViT-L/14 (MuSc's best localisation; use --image-size 518)"),
    ("timm:vit_base_patch14_dinov2.lvd142m", "DINOv2 ViT-B/14, faster"),
    ("timm:vit_small_patch14_dinov2.lvd142m", "DINOv2 ViT-S/14, fastest"),
    ("timm:vit_large_patch16_dinov3.lvd1689m", "DINOv3 ViT-L/16 (patch 16: use --image-size 512)"),
    ("timm:vit_large_patch14_reg4_dinov2.lvd142m", "DINOv2 ViT-L/14 with registers (AnomalyVFM's DINOv2, 672 px)"),
    ("timm:vit_large_patch16_dinov3_qkvb.lvd1689m", "DINOv3 ViT-L/16 with q/v biases (AnomalyVFM's DINOv3, 768 px)"),
    ("timm:vit_large_patch14_dinov2.lvd142m:random", "DINOv2-L architecture, random weights (speed benchmarks)"),
    (f"{TIMM_PREFIX}{TINY_DINO}:random", "tiny random DINOv2-style model (tests and smoke runs)"),
)


def vision_only_message(method: str, backbone: str) -> str:
    """The one line a text-needing method gives for a vision-only backbone."""
    return (f"method '{method}' compares images with text and backbone '{backbone}' is vision-only (no text tower): "
            f"use --method musc (a batch of >= 5 images), or --reference GOOD (known-good images) with any method, "
            f"or a CLIP backbone")


class TimmBackbone(Backbone):
    """A frozen timm ViT exposing ``tokens(images, layers)`` like :class:`~zsad.backbones.clip.ClipBackbone`."""

    #: no text tower: ``clip``/``anomalyclip``/``auto`` refuse it
    has_text = False
    #: RsCIN takes the normed class token as it is (the official DINOv2 path); CLIP's embedding is L2-normalised
    normalize_pooled = False
    #: squash-resize bilinearly, as MuSc's non-CLIP path; ImageNet mean/std
    resize_filter = Image.BILINEAR

    def __init__(self, model: nn.Module, spec: BackboneSpec, image_size: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 pos_interpolation: str = "bicubic") -> None:
        super().__init__()
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "blocks"):
            raise UsageError(f"backbone '{spec.name}' is not a timm ViT with forward_intermediates")
        act = getattr(getattr(model.blocks[0], "mlp", None), "act", None)
        self._set_facts(spec, image_size=image_size, patch_size=int(model.patch_embed.patch_size[0]), mean=mean,
                        std=std, pos_interpolation=pos_interpolation,
                        activation="gelu" if isinstance(act, nn.GELU) else type(act).__name__.lower())
        self.model = model.eval().requires_grad_(False)

    def with_activation(self, activation: str) -> TimmBackbone:
        """The timm model runs its own activation; ``gelu`` (what ``auto`` resolves to) keeps it."""
        return super().with_activation(self.activation if activation == "gelu" else activation)

    # -- facts -------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.model.blocks)

    @property
    def width(self) -> int:
        return int(self.model.embed_dim)

    embed_dim = width

    @property
    def device(self) -> torch.device:
        return self.model.patch_embed.proj.weight.device

    def tokens(self, images: torch.Tensor, layers: Sequence[int], *, vv: bool = False,
               vv_start: int | None = None) -> TokenOutput:
        """Final-normed patch tokens of the given 0-based blocks, each ``[B, 1 + L, C]`` with a zero token in front
        (the class and register tokens are removed); ``pooled`` and ``cls_raw`` are the final normed class token.
        One pass through every block (the class token comes from the last)."""
        if vv:
            raise UsageError(f"value-value attention needs a CLIP backbone; '{self.spec.name}' is a timm model")
        wanted = self.check_layers(layers)
        order = sorted(set(wanted))
        x = images.to(self.device, self.model.patch_embed.proj.weight.dtype)
        if self.pos_interpolation == DINOV2_HUB:  # any input size, positions resampled as the DINOv2 hub model does
            patches, cls = hub_tokens(self.model, x, order)
            chosen = {i: torch.cat([patches[i].new_zeros(x.shape[0], 1, patches[i].shape[2]), patches[i]], dim=1)
                      for i in wanted}
            return TokenOutput(layers=chosen, pooled=cls, cls_raw=cls, plain=dict(chosen))
        final, inter = self.model.forward_intermediates(x, indices=order, norm=True, output_fmt="NLC",
                                                        intermediates_only=False)
        taps = {}
        for index, patches in zip(order, inter):
            zero = patches.new_zeros(patches.shape[0], 1, patches.shape[2])
            taps[index] = torch.cat([zero, patches], dim=1)
        cls = final[:, 0]
        chosen = {i: taps[i] for i in wanted}
        return TokenOutput(layers=chosen, pooled=cls, cls_raw=cls, plain=dict(chosen))


# -- loading ---------------------------------------------------------------------------------------------------


def load_timm_backbone(name: str, *, image_size: int = 518, device: torch.device | str = "cpu",
                       cache_dir: str | None = None, offline: bool | None = None, activation: str | None = None,
                       warn_random: bool = True, pos_interpolation: str = "bicubic") -> TimmBackbone:
    """Build a frozen timm backbone in fp32 on ``device`` from a ``timm:`` name (see :mod:`zsad.backbones.names`).

    ``pos_interpolation="dinov2-hub"`` keeps the checkpoint's native position table and resamples it per input as
    DINOv2's hub model does (:mod:`zsad.backbones.dinov2_hub`): ``tokens`` then takes any multiple of the patch
    size, and ``image_size`` is only the nominal size (AnomalyDINO's shorter side)."""
    import timm

    from zsad import weights

    spec = parse_backbone_name(name)
    if spec.family != "timm":
        raise UsageError(f"backbone '{name}' is not a timm name (timm:MODEL[:random|:/path])")
    if activation not in (None, "auto", "gelu"):
        raise UsageError(f"--activation {activation} applies to CLIP backbones; timm models run their own")
    patch = _patch_size(spec)
    hub = pos_interpolation == DINOV2_HUB
    if image_size % patch and not hub:
        near = max(patch, round(image_size / patch) * patch)
        raise UsageError(f"image size {image_size} is not a multiple of the patch size {patch} of '{name}'; use "
                         f"--image-size {near} ({near // patch} x {near // patch} patches)")
    if spec.arch == TINY_DINO:
        model = _tiny(spec, None if hub else image_size)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        if not timm.is_model(spec.arch):
            raise UsageError(f"unknown timm model '{spec.arch}' (see `zsad models` or timm.list_pretrained())")
        overlay = None
        if spec.kind == "tag":
            overlay = {"file": resolve_timm_checkpoint(spec.arch, cache_dir=cache_dir, offline=offline)}
        elif spec.kind == "file":
            overlay = {"file": weights.check_weights_file(spec.source)}
        try:
            sized = {} if hub else {"img_size": image_size}  # hub: the native table, resampled per input
            model = timm.create_model(spec.arch, pretrained=overlay is not None, pretrained_cfg_overlay=overlay,
                                      num_classes=0, **sized)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise UsageError(f"could not load backbone '{name}': {str(exc).splitlines()[0][:300]}") from exc
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if hub and getattr(model, "pos_embed", None) is None:
        raise UsageError(f"backbone '{name}' has no position table to resample as DINOv2's hub model does (rotary "
                         f"position embeddings?); this method needs a DINOv2 model, e.g. "
                         f"timm:vit_small_patch14_dinov2.lvd142m")
    if spec.random_weights and warn_random:

        log.warning(random_weights_message(name))
    return TimmBackbone(model, spec, image_size, mean, std, pos_interpolation=pos_interpolation).to(device)


def _patch_size(spec: BackboneSpec) -> int:
    """The model's patch size from its name (``patch14``, ``patch16``), without building it; 14 for the tiny one."""
    import re

    if spec.arch == TINY_DINO:
        return 14
    found = re.search(r"patch(\d+)", spec.arch)
    return int(found.group(1)) if found else 1


def _tiny(spec: BackboneSpec, image_size: int | None) -> nn.Module:
    """The tiny DINOv2-style model (``image_size`` None: its native size); a file is loaded through timm's ViT
    checkpoint filter (which converts the original DINOv2 release layout and resamples position embeddings)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    from zsad import weights
    from zsad.backbones.tiny_dino import TINY_DINO_NATIVE_SIZE, build_tiny_dino

    image_size = image_size or TINY_DINO_NATIVE_SIZE
    if spec.kind != "file":
        return build_tiny_dino(image_size)
    path = weights.check_weights_file(spec.source)
    if str(path).endswith(".safetensors"):  # e.g. an imported AnomalyVFM checkpoint's backbone
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    regs = state.get("register_tokens", state.get("reg_token"))
    model = build_tiny_dino(image_size, reg_tokens=0 if regs is None else int(regs.shape[1]))
    try:
        model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    except (RuntimeError, KeyError) as exc:
        raise UsageError(f"could not load backbone '{spec.name}': {str(exc).splitlines()[0][:300]}") from exc
    return model


def resolve_timm_checkpoint(model_name: str, *, cache_dir: str | None = None, offline: bool | None = None) -> str:
    """Local path of a timm pretrained tag's weights: the Hugging Face cache first, then (unless offline) a download
    from the Hub; a miss raises the same one-line message as for CLIP weights."""
    from timm.models import get_pretrained_cfg

    from zsad import weights

    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        raise UsageError(f"timm model '{model_name}' has no pretrained tag on the Hugging Face Hub (see "
                         f"timm.list_pretrained()); give a file as timm:{model_name}:/path")
    repo = cfg.hf_hub_id
    offline = weights.offline_from_env() if offline is None else offline
    found = weights._cached_hf_file(repo, _WEIGHT_FILES, cache_dir)
    if found:
        return found
    looked = [f"Hugging Face cache {weights.hf_cache_dir(cache_dir)} for {repo} ({', '.join(_WEIGHT_FILES)})"]
    hint = f"python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\""
    what = f"timm:{model_name}"
    if offline:
        weights._missing(what, looked, hint, offline, advice=TIMM_ADVICE)
    try:
        from huggingface_hub import hf_hub_download

        weights.check_reachable(weights.hub_endpoint())
        return hf_hub_download(repo, _WEIGHT_FILES[0], cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types; all mean "missing"
        weights._missing(what, looked, hint, offline, exc, advice=TIMM_ADVICE)
    raise AssertionError("unreachable")

