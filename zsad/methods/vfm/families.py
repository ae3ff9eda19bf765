"""AnomalyVFM's backbone families as its official code runs them, and the zsad backbone each maps onto.

Facts from MaticFuc/AnomalyVFM: ``models/{radio,dinov2,clip,dinov3,siglip2}.py`` (which model, its normalisation),
``README.md`` / ``train.py`` (input size: 768 for RADIO, DINOv3 and SigLIP2, 672 for DINOv2 and CLIP "to get the
same feature size", 48 x 48 patches; steps: RADIO 200, SigLIP2 300, the others 500).

- ``radio``: RADIO v2.5-L (``radio:v2.5-l``), position table resized bilinearly (the torch-hub model).
- ``dinov2``: the hub's ``dinov2_vitl14_reg`` = timm ``vit_large_patch14_reg4_dinov2``. Its hub model resizes the
  37 x 37 position table bicubically with antialiasing to the input's grid (``interpolate_antialias=True``,
  ``interpolate_offset=0`` for the register models, facebookresearch/dinov2 ``hub/backbones.py``), which is what
  timm does once when the model is built for 672 px (``resample_abs_pos_embed``: bicubic, antialias).
- ``clip``: Hugging Face ``openai/clip-vit-large-patch14-336``'s vision model = open_clip ``ViT-L-14-336`` with the
  ``openai`` weights (QuickGELU); ``interpolate_pos_encoding`` resizes its 24 x 24 table bicubically, no antialias.
- ``dinov3``: the hub's ``dinov3_vitl16`` = timm ``vit_large_patch16_dinov3_qkvb`` (rotary positions, 4 storage
  tokens). Its ``qkv`` masks the k part of the bias (``LinearKMaskedBias``); AnomalyVFM's DoRA wrapper calls
  ``F.linear`` with the unmasked bias, and timm keeps that part zero, so an imported checkpoint's k bias must be zero
  (it is in the released ViT-L/16: zero-initialised and never trained).
- ``siglip2``: not mapped (see :data:`UNMAPPED`).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from zsad.backbones.names import BackboneSpec, parse_backbone_name

#: every family's transform starts with torchvision's ``T.Resize((H, H))`` on the PIL image: PIL's bilinear squash
#: (CLIP's own pipeline in zsad resizes bicubically, so vfm sets this on its backbone)
RESIZE_FILTER = Image.BILINEAR


@dataclass(frozen=True)
class VfmFamily:
    name: str
    #: the zsad backbone with the released weights the official code adapts
    backbone: str
    image_size: int
    steps: int
    #: how zsad resizes the position table to the input's grid, as the official model does
    pos_interpolation: str


FAMILIES = {
    "radio": VfmFamily("radio", "radio:v2.5-l", 768, 200, "bilinear"),
    "dinov2": VfmFamily("dinov2", "timm:vit_large_patch14_reg4_dinov2.lvd142m", 672, 500, "bicubic"),
    "clip": VfmFamily("clip", "ViT-L-14-336:openai", 672, 500, "bicubic"),
    #: rotary positions: nothing to resize (the value is the timm backbone's unused default)
    "dinov3": VfmFamily("dinov3", "timm:vit_large_patch16_dinov3_qkvb.lvd1689m", 768, 500, "bicubic"),
}

#: the official families zsad does not import, and why (one line each, also said in the README)
UNMAPPED = {
    "siglip2": "the official SigLIP2 is Hugging Face's NaFlex model (google/siglip2-so400m-patch16-naflex: a linear "
               "patch embedding, a 16 x 16 position table resized with antialiasing per input, the MAP head's pooled "
               "output as summary); zsad's backbones have no NaFlex model",
}


def family_of(backbone: str | BackboneSpec) -> VfmFamily | None:
    """The official family a zsad backbone name belongs to (None: none of AnomalyVFM's)."""
    spec = parse_backbone_name(backbone) if isinstance(backbone, str) else backbone
    if spec.family == "radio":
        return FAMILIES["radio"]
    if spec.family == "timm":
        return next((FAMILIES[f] for f in ("dinov2", "dinov3") if f in spec.arch), None)
    return FAMILIES["clip"]


def pos_interpolation_for(backbone: str | BackboneSpec) -> str:
    """The position-table resize the official code ran this backbone's family with (bicubic when unknown)."""
    family = family_of(backbone)
    return family.pos_interpolation if family else "bicubic"
