"""How ``zsad demo`` was started (:class:`DemoConfig`) and the check of its limits."""

from __future__ import annotations

from dataclasses import dataclass

from zsad.decisions import check_unit
from zsad.errors import UsageError


@dataclass(frozen=True)
class DemoConfig:
    """How ``zsad demo`` was started; visitors choose method, class, adapter and threshold on the page."""

    backbone: str = "ViT-L-14-336:openai"
    image_size: int = 518
    activation: str = "auto"  # the backbone's MLP activation; auto: per method (zsad.detector.resolve_activation)
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    cache_dir: str | None = None
    prompts: str | None = None  # prompt bank for clip and auto
    adapters: tuple[str, ...] = ()  # adapter folders offered for anomalyclip (visitors never type paths)
    class_name: str = ""
    threshold: float = 0.5
    lvlm: str | None = None
    lvlm_adapter: str | None = None
    max_files: int = 32  # images per run
    max_file_mb: int = 20  # per uploaded file; gradio enforces it at upload, we check again
    max_pixels: int = 4096 * 4096  # per decoded image: a decompression-bomb guard (full-size maps go to disk)
    concurrency: int = 4  # scoring events run at once (model passes are serialised by the model lock)
    queue_size: int = 64
    max_detectors: int = 8  # (method, class, adapter) detectors kept; they share the backbone
    max_sessions: int = 64  # live visitor sessions; the least recently used is evicted beyond it
    session_ttl_s: int = 900  # an idle session expires after this long (its folder is removed)
    max_memory_gb: float | None = None  # the demo's memory budget; None: 75 % of the machine's (or container's)
    display_side: int = 512  # pictures and maps kept in memory and drawn at most this many pixels a side
    memory_wait_s: float = 30.0  # how long a request waits for memory before it is refused
    health_every: int = 50  # log a health line every this many scoring requests


def check_config(config: DemoConfig) -> None:
    """Refuse limits that make no sense, with a message naming the option."""
    check_threshold(config.threshold)
    for name in ("max_files", "max_file_mb", "max_pixels", "concurrency", "max_detectors", "batch_size",
                 "max_sessions", "session_ttl_s", "display_side", "health_every"):
        if getattr(config, name) < 1:
            raise UsageError(f"demo option {name} must be at least 1, got {getattr(config, name)}")
    if config.max_memory_gb is not None and not config.max_memory_gb > 0:
        raise UsageError(f"max_memory_gb must be positive, got {config.max_memory_gb}")
    if config.memory_wait_s < 0:
        raise UsageError(f"memory_wait_s must be >= 0, got {config.memory_wait_s}")


def check_threshold(threshold: float | None) -> None:
    """A threshold from the page or the command line (:func:`zsad.decisions.check_unit`, the one range check)."""
    if threshold is None:
        raise UsageError("threshold must be in [0, 1], got None")
    check_unit(float(threshold), "threshold")
