"""The MLP activation of a CLIP backbone, GELU or QuickGELU: named explicitly, applied to a built model, read back.

OpenAI's CLIP weights were trained with QuickGELU, ``x * sigmoid(1.702 x)``; open_clip's JSON configs build plain
``nn.GELU`` unless the architecture name ends in ``-quickgelu`` (open_clip #771). Where pre-activations are large
(|x| of a few units, as in real CLIP weights) the two functions differ, so every token after the first block
depends on which one a loader picked. Published pipelines did not all pick the weights' own: MuSc's loader gives
OpenAI weights GELU at 518 px (see :meth:`zsad.methods.musc.MuscMethod.published_activation`). zsad therefore
names the activation (``--activation``, ``zsad.create(activation=...)``), resolves ``auto`` per method (what the
method's published code used; :meth:`zsad.methods.base.Method.published_activation`) and records the result.

The activation is a parameter-free module in every residual block's MLP (``mlp.gelu``, vision and text towers), so
it can be set on a built model without touching its weights.
"""

from __future__ import annotations

from torch import nn

from zsad.backbones.names import BackboneSpec
from zsad.errors import UsageError

GELU = "gelu"
QUICK_GELU = "quick_gelu"
AUTO = "auto"
#: What ``--activation`` accepts; ``auto`` is resolved per method before a backbone is built.
ACTIVATIONS: tuple[str, ...] = (AUTO, GELU, QUICK_GELU)


def check_activation(name: str, *, allow_auto: bool = True) -> str:
    """``name`` if it is a known activation (``auto`` only where ``allow_auto``), else a UsageError."""
    known = ACTIVATIONS if allow_auto else (GELU, QUICK_GELU)
    if name not in known:
        raise UsageError(f"unknown activation {name!r}; choose one of {', '.join(known)}")
    return name


def _module(name: str) -> nn.Module:
    from open_clip.transformer import QuickGELU

    return QuickGELU() if name == QUICK_GELU else nn.GELU()


def _mlps(model: nn.Module) -> list[nn.Sequential]:
    """Every residual block's MLP that holds an activation named ``gelu`` (open_clip's layout, both towers)."""
    return [m.mlp for m in model.modules()
            if isinstance(getattr(m, "mlp", None), nn.Sequential) and hasattr(m.mlp, "gelu")]


def set_activation(model: nn.Module, name: str) -> None:
    """Give every residual block of ``model`` (vision and text) the activation ``name``, in place."""
    check_activation(name, allow_auto=False)
    mlps = _mlps(model)
    if not mlps:
        raise UsageError("the backbone has no open_clip residual MLPs whose activation could be set")
    for mlp in mlps:
        mlp.gelu = _module(name)


def model_activation(model: nn.Module) -> str:
    """The activation ``model``'s residual blocks use: ``gelu``, ``quick_gelu``, or ``mixed`` / a class name."""
    from open_clip.transformer import QuickGELU

    found = set()
    for mlp in _mlps(model):
        act = mlp.gelu
        if isinstance(act, QuickGELU):
            found.add(QUICK_GELU)
        elif isinstance(act, nn.GELU) and act.approximate == "none":
            found.add(GELU)
        else:
            found.add(type(act).__name__)
    return found.pop() if len(found) == 1 else ("mixed" if found else "none")


# -- what the weights and the configs say, without loading weights ------------------------------------------------

def _arch_config(arch: str) -> dict:
    import open_clip

    return open_clip.get_model_config(arch) or {}


def openai_weights(spec: BackboneSpec) -> bool:
    """Whether the backbone holds (or, random or from a file, stands in for) OpenAI's released CLIP weights: the
    ``openai`` tag; a random or local-file model of an architecture OpenAI released; the tiny test CLIP, which is
    built as one of them (QuickGELU)."""
    import open_clip

    if spec.family == "timm":
        return False
    if spec.kind == "tiny":
        return True
    if spec.kind == "tag":
        return spec.source.lower() == "openai"
    if spec.kind in ("random", "file"):
        return "openai" in open_clip.list_pretrained_tags_by_model(spec.arch)
    return False


def weights_activation(spec: BackboneSpec, *, cache_dir: str | None = None) -> str:
    """The activation the weights were trained with, as zsad has always built them: QuickGELU when the pretrained
    tag says so and for stand-ins of OpenAI's weights; otherwise what the architecture's config (or an hf-hub
    model's ``open_clip_config.json``) builds. Vision-only timm models run their own GELU."""
    import open_clip

    if spec.family == "timm":
        return GELU
    if spec.kind == "tag":
        tagged = open_clip.get_pretrained_cfg(spec.arch, spec.source).get("quick_gelu")
        return QUICK_GELU if tagged else config_activation(spec)
    if spec.kind == "hf-hub":
        from zsad.weights import hf_hub_model_config

        return QUICK_GELU if hf_hub_model_config(spec.source, cache_dir=cache_dir).get("quick_gelu") else GELU
    if openai_weights(spec):
        return QUICK_GELU
    return config_activation(spec)


def config_activation(spec: BackboneSpec) -> str:
    """What a model built from the architecture's JSON config alone uses (``quick_gelu`` only in ``-quickgelu``
    configs); the tiny CLIP's config names no activation, so GELU, like ``ViT-L-14-336.json``."""
    if spec.kind == "tiny":
        return GELU
    return QUICK_GELU if _arch_config(spec.arch).get("quick_gelu") else GELU


def config_image_size(spec: BackboneSpec) -> int | None:
    """The input size in the architecture's config (336 for ViT-L-14-336), or None when unknown."""
    if spec.kind == "tiny":
        from zsad.backbones.tiny import TINY_NATIVE_IMAGE_SIZE

        return TINY_NATIVE_IMAGE_SIZE
    size = _arch_config(spec.arch).get("vision_cfg", {}).get("image_size")
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) if size else None
