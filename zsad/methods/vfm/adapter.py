"""AnomalyVFM adapters (kind ``anomalyvfm``): DoRA, decoder and head in one adapter folder.

``adapter.json`` fields (besides ``kind`` and ``format_version``): ``backbone`` (the backbone name it was made for),
``image_size``, ``rank``, ``alpha``, ``depth`` (adapted blocks), ``width``, ``summary_dim`` (the head's input),
``upsample_blocks``, ``backbone_weights`` (optional: a file in the folder holding the backbone it was trained on,
written when an official whole-model checkpoint is imported), ``training``, ``source`` and ``metrics``.
``weights.safetensors``: ``dora.blocks.{i}.qkv.{lora_A_q, lora_B_q, lora_A_v, lora_B_v, mag_q, mag_v}``,
``dora.blocks.{i}.proj.{lora_A, lora_B, magnitude}``, ``decoder.*`` (the official ``SimpleDecoder`` names) and
``head.weight`` / ``head.bias``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zsad.adapters.folder import AdapterFolder, save_adapter
from zsad.backbones.base import Backbone
from zsad.errors import AdapterError
from zsad.methods.vfm.decoder import VfmDecoder
from zsad.methods.vfm.dora import DEFAULT_ALPHA, DEFAULT_RANK, DoraSet, targets

KIND = "anomalyvfm"
BACKBONE_WEIGHTS = "backbone.safetensors"


@dataclass(frozen=True)
class VfmSettings:
    """Everything besides the tensors that rebuilds the modules."""

    backbone: str
    image_size: int
    depth: int
    width: int
    summary_dim: int
    rank: int = DEFAULT_RANK
    alpha: float = DEFAULT_ALPHA
    upsample_blocks: int = 1
    backbone_weights: str | None = None

    def to_config(self) -> dict[str, Any]:
        config = {"backbone": self.backbone, "image_size": self.image_size, "depth": self.depth, "width": self.width,
                  "summary_dim": self.summary_dim, "rank": self.rank, "alpha": self.alpha,
                  "upsample_blocks": self.upsample_blocks}
        if self.backbone_weights:
            config["backbone_weights"] = self.backbone_weights
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str) -> VfmSettings:
        try:
            return cls(backbone=str(config["backbone"]), image_size=int(config["image_size"]),
                       depth=int(config["depth"]), width=int(config["width"]), summary_dim=int(config["summary_dim"]),
                       rank=int(config.get("rank", DEFAULT_RANK)), alpha=float(config.get("alpha", DEFAULT_ALPHA)),
                       upsample_blocks=int(config.get("upsample_blocks", 1)),
                       backbone_weights=config.get("backbone_weights") or None)
        except KeyError as exc:
            raise AdapterError(f"{where}: adapter.json has no field {exc} (kind {KIND})") from None
        except (TypeError, ValueError) as exc:
            raise AdapterError(f"{where}: adapter.json has a malformed field ({exc})") from None

    @classmethod
    def for_backbone(cls, backbone: Backbone, **changes) -> VfmSettings:
        base = dict(backbone=backbone.spec.name, image_size=backbone.image_size, depth=len(targets(backbone)),
                    width=backbone.width, summary_dim=_summary_dim(backbone))
        return cls(**{**base, **changes})


def _summary_dim(backbone: Backbone) -> int:
    """The width of the head's input: RADIO's summary (3 tokens), a class token otherwise."""
    return int(getattr(backbone, "summary_dim", backbone.width))


class VfmModules(nn.Module):
    """The trained parts: ``dora``, ``decoder``, ``head``."""

    def __init__(self, settings: VfmSettings) -> None:
        super().__init__()
        self.settings = settings
        self.dora = DoraSet(settings.depth, settings.width, settings.rank, settings.alpha)
        self.decoder = VfmDecoder(settings.width, settings.upsample_blocks)
        self.head = nn.Linear(settings.summary_dim, 1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, settings: VfmSettings, tensors: dict[str, torch.Tensor], where: str) -> VfmModules:
        """Rebuild from stored tensors; a missing, extra or misshapen tensor is one AdapterError."""
        modules = cls(settings)
        check_tensors(modules.state_dict(), tensors, where, "the tensors of adapter.json's modules")
        modules.load_state_dict({k: v.float() for k, v in tensors.items()})
        return modules


def check_tensors(own: dict[str, torch.Tensor], given: dict[str, torch.Tensor], where: str, what: str) -> None:
    """``given`` has exactly ``own``'s keys and shapes; else one AdapterError naming the first misfit."""
    missing = sorted(set(own) - set(given))
    extra = sorted(set(given) - set(own))
    if missing or extra:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise AdapterError(f"{where}: {what} do not fit ({len(missing)} missing, {len(extra)} unexpected; {first})")
    for name, value in given.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise AdapterError(f"{where}: tensor {name!r} has shape {tuple(value.shape)}, {what} need "
                               f"{tuple(own[name].shape)}")


def random_modules(backbone: Backbone, seed: int = 0, rank: int = DEFAULT_RANK) -> VfmModules:
    """Seeded random trained parts for ``backbone`` with non-zero adapters (random ``lora_B``, magnitudes off the
    row norms): what a smoke run on random weights uses, and what tests compare implementations with."""
    settings = VfmSettings.for_backbone(backbone, rank=rank)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = VfmModules(settings)
        modules.dora.reset_magnitudes(backbone)
        with torch.no_grad():
            for block in modules.dora.blocks:
                for name, p in block.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0.0, 0.5)
                    elif "mag" in name:
                        p.mul_(1.0 + 0.1 * torch.randn_like(p))
                    elif "lora_A" in name:
                        p.normal_(0.0, 0.5)
            modules.head.weight.normal_(0.0, 0.05)
            modules.decoder.final.weight.normal_(0.0, 0.5)
    return modules


def save_vfm_adapter(folder: str | Path, modules: VfmModules, *, training: dict[str, Any] | None = None,
                     source: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                     settings: VfmSettings | None = None) -> Path:
    """Write the adapter folder atomically (the whole folder swapped in at once)."""
    settings = settings or modules.settings
    config = {**settings.to_config(), "training": training or {}, "source": source or {"kind": "trained"},
              "metrics": metrics or {}}
    return save_adapter(folder, KIND, config, modules.tensors())


def check_folder(folder: AdapterFolder, backbone: Backbone | None) -> None:
    """Validator for :func:`zsad.adapters.load`: the tensors against adapter.json and, given a loaded backbone,
    adapter.json against the backbone (adapted blocks, width, summary width)."""
    where = str(folder.path or "adapter")
    settings = VfmSettings.from_config(folder.config, where)
    VfmModules.from_tensors(settings, folder.tensors, where)
    if backbone is None:
        return
    have = VfmSettings.for_backbone(backbone)
    for key in ("depth", "width", "summary_dim"):
        if getattr(settings, key) != getattr(have, key):
            raise AdapterError(f"{where}: the adapter has {key} {getattr(settings, key)}, backbone "
                               f"'{backbone.spec.name}' has {getattr(have, key)} (made for another architecture)")


@dataclass
class VfmAdapter:
    settings: VfmSettings
    modules: VfmModules
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # training, source, metrics

    @property
    def backbone_file(self) -> Path | None:
        """The backbone weights stored in the folder (an imported whole-model checkpoint), if any."""
        if self.path is None or not self.settings.backbone_weights:
            return None
        return self.path / self.settings.backbone_weights

    def holds(self, backbone: Backbone) -> bool:
        """``backbone`` was loaded from the backbone file stored in this folder."""
        own, spec = self.backbone_file, backbone.spec
        return own is not None and spec.kind == "file" and Path(spec.source).expanduser().resolve() == own.resolve()


def load_vfm_adapter(path: str | Path, backbone: Backbone | None = None) -> VfmAdapter:
    """Load and check an ``anomalyvfm`` adapter: its tensors against adapter.json and, given the backbone it will
    run on, that it was made for that backbone (its recorded name, or the backbone file stored in the folder) and
    fits it."""
    from zsad.adapters import check_backbone, load_adapter

    folder = load_adapter(path, KIND)
    where = str(path)
    settings = VfmSettings.from_config(folder.config, where)
    modules = VfmModules.from_tensors(settings, folder.tensors, where)
    adapter = VfmAdapter(settings=settings, modules=modules, path=Path(path),
                         extra={k: folder.config.get(k) for k in ("training", "source", "metrics")})
    if backbone is not None:
        if not adapter.holds(backbone):
            check_backbone(folder, backbone)
        check_folder(folder, backbone)
    return adapter
