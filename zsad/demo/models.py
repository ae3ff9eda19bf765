"""The demo's model: detectors built through :func:`zsad.create` on one shared backbone, cached, behind one lock;
the methods and adapters the page offers."""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zsad.demo.config import DemoConfig
from zsad.demo.memory import Costs
from zsad.demo.names import safe_name
from zsad.errors import UsageError
from zsad.methods import list_methods, method_class


def method_choices() -> list[tuple[str, str]]:
    """(label, name) of every registered method, for the page's method choice."""
    return [(f"{name}: {method_class(name).summary}", name) for name in list_methods()]


def adapter_methods() -> list[str]:
    """The methods that need an adapter (learned prompts)."""
    return [name for name in list_methods() if method_class(name).adapter_kind is not None]


def find_adapters(folders: Sequence[str]) -> dict[str, Path]:
    """Adapters offered on the page: those given at start-up and the bundled ones, by folder name."""
    from zsad.resources import data_dir

    found: dict[str, Path] = {}
    for folder in folders:
        path = Path(folder)
        if not (path / "adapter.json").is_file():
            raise UsageError(f"--adapter {folder}: not an adapter folder (no adapter.json)")
        found[safe_name(path.resolve().name, fallback="adapter")] = path
    try:
        bundled = data_dir("adapters", "README.md")
    except FileNotFoundError:
        return found
    for path in sorted(bundled.iterdir()):
        if (path / "adapter.json").is_file():
            found.setdefault(safe_name(path.name, fallback="adapter"), path)
    return found


class Models:
    """Detectors by ``(method, class, adapter)``, sharing one loaded backbone per position-interpolation mode (a
    ViT-L is 0.9 GB). :attr:`lock` serialises model passes across visitors (a GPU never holds two batches, CPU
    threads are not oversubscribed)."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.adapters = find_adapters(config.adapters)
        self.detectors: OrderedDict[tuple[str, str, str | None], Any] = OrderedDict()
        self.random_weights: bool | None = None  # known once the backbone is loaded
        self._backbones: dict[str, Any] = {}  # pos_interpolation -> backbone

    def _backbone(self, cls):
        """The backbone shared by the methods that resize position embeddings like ``cls``, loaded through the
        builder (:func:`zsad.detector.backbone_for`) for the first of them."""
        from zsad.detector import backbone_for

        if cls.pos_interpolation not in self._backbones:
            c = self.config
            self._backbones[cls.pos_interpolation] = backbone_for(
                cls, c.backbone, image_size=c.image_size, device=c.device, activation=c.activation,
                cache_dir=c.cache_dir, warn_random=False)
        return self._backbones[cls.pos_interpolation]

    def detector(self, method: str, class_name: str | None = None, adapter: str | None = None):
        """The cached detector for ``(method, class, adapter)``, built on the shared backbone on first use; the
        least recently used detectors beyond ``max_detectors`` are dropped (class names are free text)."""
        import zsad

        class_name = (class_name or "").strip() or None
        key = (method, class_name or "", adapter)
        with self.lock:
            if key in self.detectors:
                self.detectors.move_to_end(key)
                return self.detectors[key]
            cls = method_class(method)
            options: dict[str, Any] = {}
            if cls.adapter_kind is not None and adapter:
                if adapter not in self.adapters:
                    raise UsageError(f"unknown adapter '{adapter}' (offered: {', '.join(self.adapters) or 'none'})")
                options["adapter"] = str(self.adapters[adapter])
            if self.config.prompts and cls.config_class is not None and "prompts" in {
                    f.name for f in dataclasses.fields(cls.config_class)}:
                options["prompts"] = self.config.prompts
            backbone = self._backbone(cls)
            self.random_weights = bool(backbone.random_weights)
            detector = zsad.create(method, backbone=backbone, precision=self.config.precision,
                                   batch_size=self.config.batch_size, class_name=class_name,
                                   activation=self.config.activation, **options)
            self.detectors[key] = detector
            while len(self.detectors) > self.config.max_detectors:
                self.detectors.popitem(last=False)
            return detector

    def check_adapters(self) -> None:
        """Load every adapter given at start-up (kind, backbone, tensors), so the page never offers one that fails
        when a visitor picks it."""
        from zsad.adapters import load as load_adapter
        from zsad.methods.anomalyclip.adapter import KIND, check_folder

        for folder in self.config.adapters:
            load_adapter(folder, self.config.backbone, kind=KIND, validator=check_folder)

    def costs(self) -> Costs:
        """Memory estimates for the loaded backbone (its token grid and width)."""
        backbone = next(iter(self._backbones.values()), None)
        grid, width = getattr(backbone, "grid_size", 0), getattr(backbone, "width", 0)
        return Costs(tokens_per_image=grid * grid + 1 if grid else 0, width=int(width or 0))
