"""zsad's web demo (``zsad demo``): upload images or pick the bundled samples, see scores, heat maps and masks,
download the table as CSV, and ask about the selected image.

One :class:`DemoApp` per process owns the model: backbones and detectors are built once, cached, and shared by
every visitor behind one lock (one model pass at a time, so a GPU never holds two batches and CPU threads are not
oversubscribed). Images are scored through zsad's runner, like ``zsad score``. Each visitor's results live in a
:class:`Session` kept by a bounded :class:`~.sessions.SessionStore` (the page's ``gr.State`` holds only its id),
with display-size pictures in memory and full-resolution maps on disk (:class:`~.kept.KeptImage`). Moving the
threshold slider decides again from those maps (``zsad.decisions.decide``), without re-scoring. Every scoring or
drawing request reserves its memory first (:class:`~.memory.MemoryBudget`): the demo refuses work with a message
rather than being killed for memory.

This folder is data shipped with zsad (``zsad/_data/demo/`` in a wheel), imported by file path as package
``zsad_demo`` from ``zsad.cli.demo``; the library below the command line never imports it.
"""

import csv
import functools
import logging
import re
import shutil
import tempfile
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsad.errors import UsageError, ZsadError

from .kept import KeptImage
from .memory import GIB, MIB, Costs, MemoryBudget, default_limit, resident_bytes, trim_heap
from .sessions import SessionExpired, SessionStore

log = logging.getLogger("zsad.demo")

HERE = Path(__file__).resolve().parent
METHOD_CHOICES: tuple[tuple[str, str], ...] = (
    ("auto: MuSc + CLIP for >= 5 images, CLIP otherwise", "auto"),
    ("clip: training-free prompts, one image at a time", "clip"),
    ("musc: images score each other (>= 5 images)", "musc"),
    ("anomalyclip: learned prompts (needs an adapter)", "anomalyclip"),
)
CSV_COLUMNS = ("name", "score", "label", "defect_type", "regions", "width", "height", "error")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                               *(f"LPT{i}" for i in range(1, 10))})
_MAX_QUESTION_CHARS = 500
#: resident growth beyond the idle server that the memory budget sets aside for gradio, uvicorn and Python
SERVER_ALLOWANCE = 256 * MIB


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


@dataclass
class Item:
    """One image of a run: its safe display name, and what the session keeps of its result, or its error."""

    name: str
    kept: KeptImage | None = None
    error: str | None = None


@dataclass
class Session:
    """One visitor's last run, kept by the :class:`~.sessions.SessionStore`; the page's state holds its id."""

    items: list[Item]
    class_name: str
    method: str
    folder: Path  # this session's files (raw maps, overlays, CSV); removed when the session ends
    threshold: float
    seconds: float = 0.0
    selected: int = 0
    chats: dict[int, Any] = field(default_factory=dict)  # image index -> zsad.dialogue.Conversation
    messages: dict[int, list[dict[str, str]]] = field(default_factory=dict)
    render_count: int = 0
    closed: bool = False  # evicted, expired or replaced: its folder is gone
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # held while a request uses it

    def scored(self) -> list[Item]:
        return [item for item in self.items if item.kept is not None]

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: the kept pictures and maps, and the pictures an LVLM conversation holds."""
        kept = sum(item.kept.nbytes for item in self.items if item.kept is not None)
        chats = sum(_picture_bytes(c.image) + _picture_bytes(c.overlay) for c in list(self.chats.values()))
        return kept + chats + 1024 * len(self.items)

    def busy(self) -> bool:
        return self.lock.locked()

    def close(self) -> None:
        """Forget the results and remove the folder (waits for a request using it to finish)."""
        with self.lock:
            self.closed = True
            self.chats.clear()
            shutil.rmtree(self.folder, ignore_errors=True)


def _picture_bytes(picture: Any) -> int:
    return 0 if picture is None else picture.width * picture.height * len(picture.getbands())


@dataclass(frozen=True)
class View:
    """What the page shows for a session at a threshold."""

    gallery: list[tuple[str, str]]  # (overlay PNG path, caption)
    rows: list[list[Any]]
    csv_path: str
    status: str


# ----------------------------------------------------------------------------------------------------- file names


def safe_name(name: str, fallback: str = "image", max_chars: int = 80) -> str:
    """A name safe to write in any folder: the last component of ``name`` (either slash), ASCII letters, digits,
    ``._-`` only, no leading dot or dash (no hidden files, no ``..``, no CSV formulas), bounded length."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    base = _UNSAFE_CHARS.sub("_", base).lstrip("._-").rstrip(". ")
    if not base:
        return fallback
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    if stem.upper() in _WINDOWS_RESERVED:
        stem = "_" + stem
    if len(stem) + len(ext) + 1 > max_chars:
        ext = ext[:10]
        stem = stem[: max(1, max_chars - len(ext) - 1)]
    return f"{stem}.{ext}" if ext else stem


def unique_names(names: Sequence[str]) -> list[str]:
    """Safe names, made distinct with ``-2``, ``-3`` ... before the extension (case-insensitively)."""
    seen: set[str] = set()
    out = []
    for raw in names:
        name = safe_name(raw)
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        candidate, n = name, 1
        while candidate.lower() in seen:
            n += 1
            candidate = f"{stem}-{n}.{ext}" if ext else f"{stem}-{n}"
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def _png_name(name: str) -> str:
    return name if name.lower().endswith(".png") else f"{name}.png"


# ------------------------------------------------------------------------------------------------------- the app


def _no_progress(*_args, **_kwargs) -> None:
    return None


class DemoApp:
    """The model, shared by every visitor, and the page's event handlers as plain methods (testable without
    a browser): :meth:`analyse`, :meth:`render`, :meth:`ask`."""

    def __init__(self, config: DemoConfig) -> None:
        if not 0.0 <= config.threshold <= 1.0:
            raise UsageError(f"threshold must be in [0, 1], got {config.threshold}")
        for name in ("max_files", "max_file_mb", "max_pixels", "concurrency", "max_detectors", "batch_size",
                     "max_sessions", "session_ttl_s", "display_side", "health_every"):
            if getattr(config, name) < 1:
                raise UsageError(f"demo option {name} must be at least 1, got {getattr(config, name)}")
        if config.max_memory_gb is not None and not config.max_memory_gb > 0:
            raise UsageError(f"max_memory_gb must be positive, got {config.max_memory_gb}")
        if config.memory_wait_s < 0:
            raise UsageError(f"memory_wait_s must be >= 0, got {config.memory_wait_s}")
        self.config = config
        self._model_lock = threading.RLock()
        self._backbones: dict[str, Any] = {}  # pos_interpolation -> ClipBackbone
        self._detectors: OrderedDict[tuple[str, str, str | None], Any] = OrderedDict()
        self._responder = None
        self._responder_lock = threading.Lock()
        self.root = Path(tempfile.mkdtemp(prefix="zsad-demo-"))
        self.sessions = SessionStore(config.max_sessions, config.session_ttl_s)
        limit = int(config.max_memory_gb * GIB) if config.max_memory_gb is not None else default_limit()
        self.budget = MemoryBudget(limit, baseline=resident_bytes() + SERVER_ALLOWANCE,
                                   kept=self.sessions.kept_bytes, make_room=self.sessions.make_room,
                                   wait_s=config.memory_wait_s)
        self._requests = 0
        self._requests_lock = threading.Lock()
        self.adapters = self._find_adapters(config.adapters)
        self.samples = {p.name: p for p in sorted((HERE / "samples").glob("*.png"))}
        self.random_weights: bool | None = None
        self.blocks = None

    # -- model -------------------------------------------------------------------------------------------------
    @staticmethod
    def _find_adapters(folders: Sequence[str]) -> dict[str, Path]:
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

    def _backbone(self, pos_interpolation: str):
        from zsad.backbones import load_backbone
        from zsad.runtime import resolve_device

        if pos_interpolation not in self._backbones:
            c = self.config
            self._backbones[pos_interpolation] = load_backbone(
                c.backbone, image_size=c.image_size, device=resolve_device(c.device), cache_dir=c.cache_dir,
                pos_interpolation=pos_interpolation, warn_random=False)
        return self._backbones[pos_interpolation]

    def detector(self, method: str, class_name: str | None = None, adapter: str | None = None):
        """The cached detector for ``(method, class, adapter)``, built on the shared backbone on first use.

        Every detector shares one loaded backbone per position-interpolation mode (a ViT-L is 0.9 GB); the least
        recently used detectors beyond ``max_detectors`` are dropped (class names are free text)."""
        import dataclasses

        import zsad
        from zsad.methods import method_class

        class_name = (class_name or "").strip() or None
        key = (method, class_name or "", adapter)
        with self._model_lock:
            if key in self._detectors:
                self._detectors.move_to_end(key)
                return self._detectors[key]
            cls = method_class(method)
            options: dict[str, Any] = {}
            if method == "anomalyclip" and adapter:
                if adapter not in self.adapters:
                    raise UsageError(f"unknown adapter '{adapter}' (offered: {', '.join(self.adapters) or 'none'})")
                options["adapter"] = str(self.adapters[adapter])
            if self.config.prompts and cls.config_class is not None and "prompts" in {
                    f.name for f in dataclasses.fields(cls.config_class)}:
                options["prompts"] = self.config.prompts
            backbone = self._backbone(cls.pos_interpolation)
            self.random_weights = bool(backbone.random_weights)
            detector = zsad.create(method, backbone=backbone, precision=self.config.precision,
                                   batch_size=self.config.batch_size, class_name=class_name,
                                   activation=self.config.activation, **options)
            self._detectors[key] = detector
            while len(self._detectors) > self.config.max_detectors:
                self._detectors.popitem(last=False)
            return detector

    def warm_up(self) -> None:
        """Load the default detector (and the LVLM) at start-up, so a missing weight file fails ``zsad demo``
        at once and the first visitor does not wait. Adapters given at start-up are checked here too (kind,
        backbone, tensors), so the page never offers one that fails when a visitor picks it."""
        from zsad.adapters import load as load_adapter
        from zsad.methods.anomalyclip.adapter import KIND, check_folder

        for folder in self.config.adapters:
            load_adapter(folder, self.config.backbone, kind=KIND, validator=check_folder)
        self.detector("auto", self.config.class_name or None)
        if self.config.lvlm:
            try:
                from zsad.dialogue.lvlm import LvlmResponder
            except ImportError as exc:
                raise UsageError(f"--lvlm needs the dialogue extra (pip install 'zsad[dialogue]'): {exc}") from None

            self._responder = LvlmResponder.load(self.config.lvlm, adapter=self.config.lvlm_adapter,
                                                 device=self.config.device, precision=self.config.precision)
        trim_heap()
        self.budget.baseline = resident_bytes() + SERVER_ALLOWANCE  # the idle server, model loaded
        if self.budget.baseline >= self.budget.limit:
            log.warning("demo: the memory budget (%.1f GB) is below the loaded model's footprint (%.1f GB): every "
                        "scoring request will be refused; raise --max-memory-gb", self.budget.limit / GIB,
                        self.budget.baseline / GIB)

    def costs(self) -> Costs:
        """Memory estimates for the loaded backbone (its token grid and width)."""
        backbone = next(iter(self._backbones.values()), None)
        grid, width = getattr(backbone, "grid_size", 0), getattr(backbone, "width", 0)
        return Costs(tokens_per_image=grid * grid + 1 if grid else 0, width=int(width or 0))

    # -- scoring -----------------------------------------------------------------------------------------------
    def _inputs(self, files: Sequence[str] | None, samples: Sequence[str] | None) -> list[tuple[str, Path]]:
        """(display name, path) of the uploads and the picked samples, with the count and size limits applied."""
        uploads = [Path(f) for f in (files or [])]
        picked = list(samples or [])
        unknown = [s for s in picked if s not in self.samples]
        if unknown:
            raise UsageError(f"unknown sample(s) {', '.join(safe_name(s) for s in unknown)}")
        count = len(uploads) + len(picked)
        if count == 0:
            raise UsageError("no images: upload images or pick some samples")
        if count > self.config.max_files:
            raise UsageError(f"too many images: {count} given, at most {self.config.max_files} per run")
        names = unique_names([p.name for p in uploads] + picked)
        return list(zip(names, uploads + [self.samples[s] for s in picked]))

    def _probe(self, path: Path) -> tuple[int, str | None]:
        """Pixels of the image from its header (nothing decoded), or 0 and why it cannot be scored."""
        import warnings

        from PIL import Image

        from zsad.data.images import load_image
        from zsad.errors import ImageError

        try:
            size = path.stat().st_size
        except OSError:
            return 0, "the uploaded file is gone"
        if size > self.config.max_file_mb * 1024 * 1024:
            return 0, f"file is {size / 2**20:.1f} MB, over the limit of {self.config.max_file_mb} MB"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    width, height = image.size
            if 0 < width * height <= self.config.max_pixels:
                return width * height, None
        except Exception:  # zsad's loader below says why, in one line
            pass
        try:  # unreadable or too large: zsad's loader gives the reason (it stops at the header)
            image = load_image(path, max_pixels=self.config.max_pixels)
        except ImageError as exc:
            return 0, exc.problem  # the problem alone: the temporary upload path means nothing to a visitor
        return image.width * image.height, None

    def _decode(self, path: Path):
        from zsad.data.images import load_image
        from zsad.errors import ImageError

        try:
            return load_image(path, max_pixels=self.config.max_pixels), None
        except ImageError as exc:
            return None, exc.problem

    def analyse(self, files: Sequence[str] | None, samples: Sequence[str] | None, class_name: str | None,
                method: str, adapter: str | None, threshold: float,
                progress: Callable[..., Any] = _no_progress) -> Session:
        """Score the uploads and picked samples; unreadable files become rows with an error. Raises a
        :class:`~zsad.errors.ZsadError` (shown as a message) when nothing can be scored, or when the memory
        budget has no room for these images (after waiting up to ``memory_wait_s``)."""
        from zsad.methods import method_class

        started = time.perf_counter()
        self._check_threshold(threshold)
        inputs = self._inputs(files, samples)
        min_batch = method_class(method).min_batch
        if method == "anomalyclip" and not adapter:
            raise UsageError("method 'anomalyclip' needs learned prompts (an adapter); "
                             + ("pick one in 'Adapter'" if self.adapters else
                                "this demo was started without one (zsad demo --adapter DIR)"))
        items, pixels = [], []
        for name, path in inputs:
            count, problem = self._probe(path)
            items.append(Item(name=name, error=problem))
            pixels.append(count)
        self._check_readable(items, method, min_batch)
        need = self.costs().scoring([p for p in pixels if p])
        with self.budget.reserve(need, on_wait=lambda: progress(0.0, desc="waiting for memory")):
            folder = Path(tempfile.mkdtemp(prefix="session-", dir=self.root))
            try:
                self._score(items, inputs, class_name, method, adapter, threshold, folder, min_batch, progress)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        return Session(items=items, class_name=(class_name or "").strip() or "object", method=method, folder=folder,
                       threshold=threshold, seconds=time.perf_counter() - started)

    @staticmethod
    def _check_readable(items: Sequence[Item], method: str, min_batch: int) -> None:
        readable = [item for item in items if item.error is None]
        if not readable:
            raise UsageError("no image could be read: " + "; ".join(f"{it.name}: {it.error}" for it in items))
        if len(readable) < min_batch:
            raise UsageError(f"method '{method}' scores images against each other and needs at least {min_batch} "
                             f"readable images of one category, got {len(readable)}: add images or use 'clip'")

    def _score(self, items: list[Item], inputs: Sequence[tuple[str, Path]], class_name: str | None, method: str,
               adapter: str | None, threshold: float, folder: Path, min_batch: int,
               progress: Callable[..., Any]) -> None:
        """Decode, score through the runner, and keep each result (display size in memory, raw map on disk)."""
        from zsad.decisions import Thresholds
        from zsad.runner import Source

        images, sources = {}, []
        for i, (item, (_name, path)) in enumerate(zip(items, inputs)):
            progress((i, len(inputs)), desc="reading images")
            if item.error is not None:
                continue
            image, item.error = self._decode(path)
            if image is not None:  # decoded once here; the runner takes the pixels as they are
                images[f"item:{i}"] = image
                sources.append(Source(key=f"item:{i}", path=item.name, image=image))
        self._check_readable(items, method, min_batch)
        progress(0.0, desc="loading the model")
        detector = self.detector(method, class_name, adapter)
        runner = detector.runner(thresholds=Thresholds(float(threshold)), max_pixels=self.config.max_pixels)
        done = 0

        def advanced(n: int) -> None:
            nonlocal done
            done += n
            progress((done, len(sources)), desc="scoring")

        outcomes = runner.run(sources, progress=advanced)
        while True:  # one model pass at a time across visitors: the lock is held per step of the run
            with self._model_lock:
                outcome = next(outcomes, None)
            if outcome is None:
                break
            index = int(outcome.source.key.split(":")[1])
            image = images.pop(outcome.source.key)
            if outcome.error is not None:
                items[index].error = outcome.error
                continue
            items[index].kept = KeptImage.keep(outcome.result, image, folder / f"map-{index}.npy",
                                               self.config.display_side)

    @staticmethod
    def _check_threshold(threshold: float) -> None:
        if threshold is None or not 0.0 <= float(threshold) <= 1.0:
            raise UsageError(f"threshold must be in [0, 1], got {threshold}")

    # -- showing -----------------------------------------------------------------------------------------------
    def render(self, session: Session, threshold: float, progress: Callable[..., Any] = _no_progress) -> View:
        """Overlays, table and CSV of ``session`` decided at ``threshold`` (from the kept maps: no re-scoring)."""
        self._check_threshold(threshold)
        need = self.costs().render([item.kept.pixels for item in session.scored()])
        with session.lock:
            if session.closed:
                raise SessionExpired()
            with self.budget.reserve(need):
                view = self._render(session, threshold, progress)
        trim_heap()
        return view

    def _render(self, session: Session, threshold: float, progress: Callable[..., Any]) -> View:
        from zsad.decisions import Thresholds, decide
        from zsad.visualize import overlay

        if threshold != session.threshold:
            session.chats.clear()  # the evidence changed: conversations restart (their messages stay visible)
        session.threshold = float(threshold)
        session.render_count += 1
        out = session.folder / f"view-{session.render_count}"  # fresh names: browsers cache by URL
        out.mkdir(parents=True, exist_ok=True)
        for old in session.folder.glob("view-*"):
            if old != out:
                shutil.rmtree(old, ignore_errors=True)
        gallery, rows = [], []
        scored = session.scored()
        for i, item in enumerate(session.items):
            if item.kept is None:
                rows.append([item.name, None, None, "", "", None, None, item.error])
                continue
            progress((i, len(session.items)), desc="drawing heat maps")
            kept = item.kept
            result = decide(kept.raw(), Thresholds(float(threshold)))  # full resolution, read back from disk
            picture = overlay(kept.picture_image(), kept.heat_map(), kept.display_mask(result.pred_mask))
            path = out / _png_name(item.name)
            picture.save(path)
            verdict = "ANOMALOUS" if result.pred_label else "normal"
            defect = f" · {result.defect_type}" if result.defect_type else ""
            gallery.append((str(path), f"{item.name} · {result.image_score:.3f} · {verdict}{defect}"))
            width, height = result.size
            cells = ", ".join(dict.fromkeys(r.cell for r in result.regions))
            rows.append([item.name, round(result.image_score, 4), int(result.pred_label), result.defect_type or "",
                         cells, width, height, ""])
            del result  # one full-resolution decision in memory at a time
        csv_path = out / "zsad-results.csv"
        with open(csv_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            writer.writerows([["" if v is None else v for v in row] for row in rows])
        anomalous = sum(int(row[2] or 0) for row in rows)
        failed = len(session.items) - len(scored)
        status = (f"**{len(scored)}** image(s) scored with `{session.method}` in {session.seconds:.1f} s: "
                  f"**{anomalous}** anomalous at threshold {threshold:.2f}")
        if failed:
            status += f"; **{failed}** could not be read (see the table)"
        if self.random_weights:
            status += ". Random backbone weights: scores are meaningless."
        return View(gallery=gallery, rows=rows, csv_path=str(csv_path), status=status)

    # -- dialogue ----------------------------------------------------------------------------------------------
    def select(self, session: Session | None, index: int) -> list[dict[str, str]]:
        """Make gallery image ``index`` (counted over scored images) the one the chat is about."""
        if session is None:
            return []
        scored = [i for i, item in enumerate(session.items) if item.kept is not None]
        if 0 <= index < len(scored):
            session.selected = scored[index]
        return session.messages.get(session.selected, [])

    @staticmethod
    def chat_label(session: Session | None) -> str:
        """The chat box's title: which image the questions are about."""
        if session is None or not session.scored():
            return "Ask about the selected image"
        index = session.selected
        if not 0 <= index < len(session.items) or session.items[index].kept is None:
            index = next(i for i, item in enumerate(session.items) if item.kept is not None)
        return f"Ask about {session.items[index].name} (click another image to switch)"

    def ask(self, session: Session | None, question: str) -> list[dict[str, str]]:
        """Answer ``question`` about the selected image with the dialogue module (grounded in its result, or the
        LVLM when ``--lvlm`` was given); returns the chat of that image."""
        if session is None or not session.scored():
            raise UsageError("score an image first, then ask about it")
        with session.lock:
            if session.closed:
                raise SessionExpired()
            if not 0 <= session.selected < len(session.items) or session.items[session.selected].kept is None:
                session.selected = next(i for i, item in enumerate(session.items) if item.kept is not None)
            index = session.selected
            messages = session.messages.setdefault(index, [])
            question = " ".join((question or "").split())[:_MAX_QUESTION_CHARS]
            if not question:
                return messages
            conversation = session.chats.get(index)
            if conversation is None:
                kept = session.items[index].kept
                with self.budget.reserve(self.costs().render([kept.pixels])):
                    conversation = self._conversation(kept, session)
                session.chats[index] = conversation
        if self._responder is not None:
            with self._responder_lock:  # one LVLM generation at a time
                answer = conversation.ask(question)
        else:
            answer = conversation.ask(question)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": str(answer)}]
        return messages

    def _conversation(self, kept: KeptImage, session: Session):
        """A conversation grounded in the full-resolution decision; an LVLM sees the display-size pictures."""
        from zsad.decisions import Thresholds, decide
        from zsad.dialogue import Conversation
        from zsad.visualize import overlay

        result = decide(kept.raw(), Thresholds(session.threshold))
        conversation = Conversation.from_result(result, class_name=session.class_name, responder=self._responder)
        if self._responder is not None:
            conversation.image = kept.picture_image()
            conversation.overlay = overlay(conversation.image, kept.heat_map(), kept.display_mask(result.pred_mask))
        return conversation

    # -- health ------------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Live sessions, memory and queue, for ``/health``, the page's footer and the log."""
        usage, stats = self.budget.usage(), self.sessions.stats()
        queue = getattr(self.blocks, "_queue", None)  # gradio's event queue (not public API: read defensively)
        try:
            queued = len(queue) if queue is not None else 0
        except TypeError:
            queued = 0
        return {"sessions": stats.live, "max_sessions": self.sessions.max_sessions,
                "kept_mb": round(stats.kept_bytes / MIB, 1), "resident_mb": round(usage.resident / MIB, 1),
                "baseline_mb": round(usage.baseline / MIB, 1), "reserved_mb": round(usage.reserved / MIB, 1),
                "limit_mb": round(usage.limit / MIB, 1), "running": usage.running, "waiting": usage.waiting,
                "queued": queued, "requests": self._requests, "refused": usage.refused, "evicted": stats.evicted,
                "expired": stats.expired}

    def health_line(self) -> str:
        h = self.health()
        return (f"server: {h['sessions']} of {h['max_sessions']} sessions ({h['kept_mb']:.0f} MB kept) · memory "
                f"{h['resident_mb'] / 1024:.2f} of {h['limit_mb'] / 1024:.1f} GB · {h['running']} running, "
                f"{h['waiting']} waiting for memory, {h['queued']} queued · {h['requests']} requests, "
                f"{h['refused']} refused")

    def _count_request(self) -> None:
        with self._requests_lock:
            self._requests += 1
            count = self._requests
        if count % self.config.health_every == 0:
            log.info("demo: %s", self.health_line())

    # -- page --------------------------------------------------------------------------------------------------
    def build(self):
        """The gradio page. Handlers turn :class:`ZsadError` into a message on the page (never a traceback)."""
        import gradio as gr

        c = self.config
        # gradio copies every shown file into its cache: delete the copies once a session could have expired
        with gr.Blocks(title="zsad demo", delete_cache=(max(60, c.session_ttl_s // 4), c.session_ttl_s)) as blocks:
            # the page holds the session's id only; the session lives in the bounded store
            state = gr.State(None, time_to_live=c.session_ttl_s, delete_callback=self.sessions.drop)
            gr.Markdown("# zsad: zero-shot anomaly detection\nUpload images of one product (or pick the samples), "
                        "say what they show, and score. Click an image, then ask about it.")
            if self.random_weights:
                gr.Markdown(f"**Warning:** backbone `{c.backbone}` has random weights: scores and maps are "
                            "meaningless (fine for tests and smoke runs).", elem_id="zsad-random-warning")
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    files = gr.File(label=f"Images (up to {c.max_files}, {c.max_file_mb} MB each)",
                                    file_count="multiple", file_types=["image"], elem_id="zsad-files")
                    samples = gr.CheckboxGroup(list(self.samples), label="Bundled samples", show_select_all=True,
                                               elem_id="zsad-samples")
                    class_name = gr.Textbox(value=c.class_name, label="What the images show",
                                            placeholder="object, e.g. bottle, fabric", max_lines=1,
                                            elem_id="zsad-class")
                    method = gr.Radio(list(METHOD_CHOICES), value="auto", label="Method", elem_id="zsad-method")
                    adapter = gr.Dropdown(list(self.adapters), value=next(iter(self.adapters), None),
                                          label="Adapter (anomalyclip)", visible=bool(self.adapters),
                                          elem_id="zsad-adapter")
                    threshold = gr.Slider(0.0, 1.0, value=c.threshold, step=0.01, label="Threshold",
                                          info="score >= threshold: anomalous; moving it does not re-score",
                                          elem_id="zsad-threshold")
                    run = gr.Button("Score", variant="primary", elem_id="zsad-score")
                    status = gr.Markdown(elem_id="zsad-status")
                with gr.Column(scale=2):
                    gallery = gr.Gallery(label="Heat maps (mask contour in white)", columns=3, height=460,
                                         format="png", object_fit="contain", elem_id="zsad-gallery")
                    table = gr.Dataframe(headers=list(CSV_COLUMNS), label="Results", interactive=False,
                                         elem_id="zsad-table")
                    download = gr.File(label="Results as CSV", elem_id="zsad-csv")
            with gr.Row():
                with gr.Column():
                    chat = gr.Chatbot(label="Ask about the selected image", height=260, elem_id="zsad-chat")
                    with gr.Row():
                        question = gr.Textbox(placeholder="e.g. where is the defect?", show_label=False, scale=4,
                                              max_lines=1, elem_id="zsad-question")
                        ask = gr.Button("Ask", scale=1, elem_id="zsad-ask")
            footer = gr.Markdown(elem_id="zsad-health")

            # gradio finds the progress tracker by this default value (its documented idiom)
            def on_score(previous, files, samples, class_name, method, adapter, threshold,
                         progress=gr.Progress()):  # noqa: B008
                try:
                    session = self.analyse(files, samples, class_name, method, adapter, threshold, progress)
                    sid = self.sessions.add(session)
                    self.sessions.drop(previous)  # its files and maps are replaced
                    view = self.render(session, threshold, progress)
                    return (sid, view.gallery, view.rows, view.csv_path, view.status,
                            gr.update(value=[], label=self.chat_label(session)), self.health_line())
                finally:
                    self._count_request()
                    trim_heap()

            def on_threshold(sid, threshold):
                if sid is None:
                    return gr.skip(), gr.skip(), gr.skip(), gr.skip()
                view = self.render(self.sessions.get(sid), threshold)
                return view.gallery, view.rows, view.csv_path, view.status

            def on_select(sid, evt: gr.SelectData):
                session = self.sessions.get(sid) if sid is not None else None
                messages = self.select(session, evt.index)
                return gr.update(value=messages, label=self.chat_label(session))

            def on_ask(sid, question):
                session = self.sessions.get(sid) if sid is not None else None
                return self.ask(session, question), ""

            run.click(_on_page(on_score), [state, files, samples, class_name, method, adapter, threshold],
                      [state, gallery, table, download, status, chat, footer], api_name="score",
                      concurrency_limit=c.concurrency)
            threshold.change(_on_page(on_threshold), [state, threshold], [gallery, table, download, status],
                             api_name="rethreshold", concurrency_limit=c.concurrency, trigger_mode="always_last")
            gallery.select(_on_page(on_select), [state], [chat], api_name=False)
            for trigger in (ask.click, question.submit):
                trigger(_on_page(on_ask), [state, question], [chat, question], api_name=False)
            blocks.load(self.health_line, None, footer, api_name=False)
        blocks.queue(default_concurrency_limit=c.concurrency, max_size=c.queue_size)
        self.blocks = blocks
        return blocks

    def launch(self, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True, quiet: bool = False):
        """Serve the page (and ``GET /health``); with ``block=False`` return at once (tests), then :meth:`close`."""
        from fastapi.routing import APIRoute

        blocks = self.blocks or self.build()
        c = self.config
        try:
            blocks.launch(server_name=host, server_port=port, max_file_size=f"{c.max_file_mb}mb",
                          allowed_paths=[str(self.root)], show_error=False, prevent_thread_lock=not block,
                          quiet=quiet, footer_links=[], ssr_mode=False,
                          # gradio keeps a copy of the page's state per browser session: bound it too
                          state_session_capacity=max(256, 4 * c.max_sessions),
                          app_kwargs={"routes": [APIRoute("/health", self.health, methods=["GET"])]})
        except OSError as exc:
            raise UsageError(f"cannot serve on {host}:{port}: {exc}") from None
        return blocks

    def close(self) -> None:
        if self.blocks is not None:
            self.blocks.close(verbose=False)
        self.sessions.close_all()
        shutil.rmtree(self.root, ignore_errors=True)


def _on_page(handler: Callable) -> Callable:
    """Wrap an event handler: user errors become a message on the page, bugs a short message and a log entry."""
    import gradio as gr

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except ZsadError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception:
            log.exception("demo: unexpected error in %s", handler.__name__)
            raise gr.Error("internal error (details are in the server log)", print_exception=False) from None

    return wrapper
