"""AnomalyCLIP prompt adapters: what ``adapter.json`` records for kind ``anomalyclip-prompts`` and the checks
that keep a learner away from a backbone it does not fit.

``adapter.json`` fields (besides ``kind`` and ``format_version``): ``backbone``, ``activation`` (the backbone's MLP
activation the prompts were trained with; absent in adapters older than zsad issue 17), ``image_size``, ``taps``
(0-based vision blocks), ``dpam_layers`` (last blocks with the V-V path), ``prompt`` (``n_ctx``,
``deep_length``, ``deep_depth``, ``round_deep_fp16``), ``local_weight``, ``temperature``, ``training`` (data
summary and hyper-parameters), ``source`` and ``metrics`` (filled when evaluated).
``weights.safetensors``: ``ctx_normal`` ``[E, W]``, ``ctx_anomalous`` ``[E, W]``, ``deep_prompts`` ``[depth-1, T, W]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsad.adapters.folder import AdapterFolder, save_adapter
from zsad.backbones.base import Backbone
from zsad.errors import AdapterError
from zsad.methods.anomalyclip.forward import TEMPERATURE
from zsad.methods.anomalyclip.prompts import PromptLearner, PromptShape, context_length, text_layers, text_width

KIND = "anomalyclip-prompts"


@dataclass(frozen=True)
class PromptSettings:
    """Everything besides the tensors that scoring needs to reproduce the adapter's training setting."""

    backbone: str
    image_size: int
    taps: tuple[int, ...]
    dpam_layers: int
    shape: PromptShape
    local_weight: float
    temperature: float = TEMPERATURE
    activation: str | None = None  # None: not recorded (older adapters)

    def to_config(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            **({"activation": self.activation} if self.activation else {}),
            "image_size": self.image_size,
            "taps": list(self.taps),
            "dpam_layers": self.dpam_layers,
            "prompt": self.shape.to_dict(),
            "local_weight": self.local_weight,
            "temperature": self.temperature,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str) -> PromptSettings:
        try:
            prompt = dict(config["prompt"])
            return cls(
                backbone=str(config["backbone"]),
                image_size=int(config["image_size"]),
                taps=tuple(int(t) for t in config["taps"]),
                dpam_layers=int(config["dpam_layers"]),
                shape=PromptShape(n_ctx=int(prompt["n_ctx"]), deep_length=int(prompt["deep_length"]),
                                  deep_depth=int(prompt["deep_depth"]),
                                  round_deep_fp16=bool(prompt.get("round_deep_fp16", True))),
                local_weight=float(config.get("local_weight", 1.0)),
                temperature=float(config.get("temperature", TEMPERATURE)),
                activation=str(config["activation"]) if config.get("activation") else None,
            )
        except KeyError as exc:
            raise AdapterError(f"{where}: adapter.json has no field {exc} (kind {KIND})") from None
        except (TypeError, ValueError) as exc:
            raise AdapterError(f"{where}: adapter.json has a malformed field ({exc})") from None


@dataclass
class PromptAdapter:
    settings: PromptSettings
    learner: PromptLearner
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # training, source, metrics


def save_prompt_adapter(folder: str | Path, learner: PromptLearner, settings: PromptSettings, *,
                        training: dict[str, Any] | None = None, source: dict[str, Any] | None = None,
                        metrics: dict[str, Any] | None = None) -> Path:
    """Write the adapter folder atomically (the whole folder swapped in at once, see :func:`save_adapter`)."""
    config = {**settings.to_config(), "training": training or {}, "source": source or {"kind": "trained"},
              "metrics": metrics or {}}
    return save_adapter(folder, KIND, config, learner.tensors())


def check_folder(folder: AdapterFolder, backbone: Backbone | None) -> None:
    """Validator to pass to :func:`zsad.adapters.load` (``validator=check_folder``): tensors against the recorded
    sizes, and, given a loaded backbone, the sizes against its towers (text width and depth, vision depth)."""
    where = str(folder.path or "adapter")
    settings = PromptSettings.from_config(folder.config, where)
    PromptLearner.from_tensors(settings.shape, folder.tensors, where)
    if not settings.taps or min(settings.taps) < 0 or settings.dpam_layers < 0:
        raise AdapterError(f"{where}: adapter.json needs at least one tapped block, all 0-based (>= 0), and a "
                           f"DPAM depth >= 0; got taps {list(settings.taps)}, dpam_layers {settings.dpam_layers}")
    if backbone is None:
        return
    width = int(folder.tensors["ctx_normal"].shape[-1])
    if width != text_width(backbone):
        raise AdapterError(f"{where}: prompt tensors are {width} wide but backbone '{backbone.spec.name}' has a "
                           f"{text_width(backbone)}-wide text tower (the adapter was made for another architecture)")
    try:
        settings.shape.check(text_layers(backbone), context_length(backbone), error=AdapterError)
    except AdapterError as exc:
        raise AdapterError(f"{where}: {exc}") from None
    depth = backbone.num_layers
    if not settings.taps or min(settings.taps) < 0 or max(settings.taps) >= depth or not 0 <= settings.dpam_layers <= depth:
        raise AdapterError(f"{where}: taps {list(settings.taps)} / DPAM over {settings.dpam_layers} blocks do not fit "
                           f"the {depth}-block vision tower of '{backbone.spec.name}'")


def load_prompt_adapter(path: str | Path, backbone: Backbone) -> PromptAdapter:
    """Load and check an ``anomalyclip-prompts`` adapter for ``backbone``; the learner is on its device."""
    from zsad.adapters import load

    folder = load(path, backbone, kind=KIND, validator=check_folder)
    settings = PromptSettings.from_config(folder.config, str(path))
    learner = PromptLearner.from_tensors(settings.shape, folder.tensors, str(path)).to(backbone.device)
    learner.requires_grad_(False)
    extra = {k: folder.config.get(k) for k in ("training", "source", "metrics")}
    return PromptAdapter(settings=settings, learner=learner, path=Path(path), extra=extra)

