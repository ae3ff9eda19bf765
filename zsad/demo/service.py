"""Scoring a visitor's images, and drawing them again at another threshold.

:meth:`Scoring.score` decodes the inputs with :mod:`zsad.data.images`, scores them through the detector's runner
(:mod:`zsad.runner`, like ``zsad score``) and keeps each result (:class:`~zsad.demo.kept.KeptImage`: display size in
memory, the raw map on disk). The runner decides each image once; the first view is drawn from those decisions.
:meth:`Scoring.render` (the threshold slider) decides again from the kept raw maps with
:func:`zsad.decisions.decide`, without re-scoring. Every request reserves its memory first
(:class:`~zsad.demo.memory.MemoryBudget`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from zsad.data.images import load_image
from zsad.decisions import Thresholds, decide
from zsad.demo import uploads
from zsad.demo.config import DemoConfig, check_threshold
from zsad.demo.kept import KeptImage
from zsad.demo.memory import MemoryBudget, trim_heap
from zsad.demo.models import Models
from zsad.demo.sessions import Item, Session, SessionExpired
from zsad.demo.view import View, ViewWriter
from zsad.errors import ImageError, UsageError
from zsad.methods import method_class
from zsad.runner import Source


def no_progress(*_args, **_kwargs) -> None:
    return None


class Scoring:
    """Scores requests on the shared :class:`~zsad.demo.models.Models` within the memory ``budget``; each run's
    files go to a fresh session folder under ``root``."""

    def __init__(self, config: DemoConfig, models: Models, budget: MemoryBudget, root: Path) -> None:
        self.config = config
        self.models = models
        self.budget = budget
        self.root = root
        self.samples = uploads.bundled_samples()

    def score(self, files: Sequence[str] | None, samples: Sequence[str] | None, class_name: str | None,
              method: str, adapter: str | None, threshold: float,
              progress: Callable[..., Any] = no_progress) -> Session:
        """Score the uploads and picked samples; unreadable files become rows with an error. The session comes
        with its first view (:attr:`Session.view`). Raises a :class:`~zsad.errors.ZsadError` (shown as a message)
        when nothing can be scored, when the method cannot score these images (e.g. too few for a batch-relative
        method), or when the memory budget has no room for them (after waiting up to ``memory_wait_s``)."""
        started = time.perf_counter()
        check_threshold(threshold)
        inputs = uploads.gather(files, samples, self.samples, self.config.max_files)
        if method_class(method).adapter_kind is not None and not adapter:
            raise UsageError(f"method '{method}' needs learned prompts (an adapter); "
                             + ("pick one in 'Adapter'" if self.models.adapters else
                                "this demo was started without one (zsad demo --adapter DIR)"))
        items, pixels = [], []
        for name, path in inputs:
            count, problem = uploads.probe(path, self.config.max_file_mb, self.config.max_pixels)
            items.append(Item(name=name, error=problem))
            pixels.append(count)
        _check_readable(items)
        need = self.models.costs().scoring([p for p in pixels if p])
        with self.budget.reserve(need, on_wait=lambda: progress(0.0, desc="waiting for memory")):
            folder = Path(tempfile.mkdtemp(prefix="session-", dir=self.root))
            session = Session(items=items, class_name=(class_name or "").strip() or "object", method=method,
                              folder=folder, threshold=float(threshold))
            try:
                self._score(session, [path for _, path in inputs], class_name, adapter, started, progress)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        return session

    def _score(self, session: Session, paths: Sequence[Path], class_name: str | None, adapter: str | None,
               started: float, progress: Callable[..., Any]) -> None:
        """Decode, score through the runner, keep each result and draw it as the runner decided it."""
        pending: dict[str, tuple[int, Image.Image]] = {}  # source key -> (item index, decoded image)
        sources = []
        for index, (item, path) in enumerate(zip(session.items, paths)):
            progress((index, len(paths)), desc="reading images")
            if item.error is not None:
                continue
            try:
                image = load_image(path, max_pixels=self.config.max_pixels)
            except ImageError as exc:
                item.error = exc.problem
                continue
            source = Source(key=item.name, path=item.name, image=image)  # names are distinct: a key each
            pending[source.key] = (index, image)
            sources.append(source)
        _check_readable(session.items)
        progress(0.0, desc="loading the model")
        detector = self.models.detector(session.method, class_name, adapter)
        runner = detector.runner(thresholds=Thresholds(session.threshold), max_pixels=self.config.max_pixels)
        session.render_count += 1
        writer = ViewWriter(session.folder, session.render_count)
        done = 0

        def advanced(n: int) -> None:
            nonlocal done
            done += n
            progress((done, len(sources)), desc="scoring")

        outcomes = runner.run(sources, progress=advanced)
        while True:  # one model pass at a time across visitors: the lock is held per step of the run
            with self.models.lock:
                outcome = next(outcomes, None)
            if outcome is None:
                break
            index, image = pending.pop(outcome.source.key)
            item = session.items[index]
            if outcome.error is not None:
                item.error = outcome.error
                continue
            item.kept = KeptImage.keep(outcome.result, image, session.folder / f"map-{index}.npy",
                                       self.config.display_side)
            writer.draw(index, item.name, item.kept, outcome.result)  # the runner's decision, not a second one
            del outcome, image  # one full-resolution result in memory at a time
        session.seconds = time.perf_counter() - started
        session.view = writer.finish(session.items, method=session.method, seconds=session.seconds,
                                     threshold=session.threshold, random_weights=self.models.random_weights)

    def render(self, session: Session, threshold: float, progress: Callable[..., Any] = no_progress) -> View:
        """Overlays, table and CSV of ``session`` decided again at ``threshold`` from the kept maps (no
        re-scoring); the session's view becomes this one."""
        check_threshold(threshold)
        need = self.models.costs().render([item.kept.pixels for item in session.scored()])
        with session.lock:
            if session.closed:
                raise SessionExpired()
            with self.budget.reserve(need):
                view = self._redraw(session, threshold, progress)
        trim_heap()
        return view

    def _redraw(self, session: Session, threshold: float, progress: Callable[..., Any]) -> View:
        if threshold != session.threshold:
            session.chats.clear()  # the evidence changed: conversations restart (their messages stay visible)
        session.threshold = float(threshold)
        session.render_count += 1
        writer = ViewWriter(session.folder, session.render_count)
        for index, item in enumerate(session.items):
            if item.kept is None:
                continue
            progress((index, len(session.items)), desc="drawing heat maps")
            result = decide(item.kept.raw(), Thresholds(float(threshold)))  # full resolution, read back from disk
            writer.draw(index, item.name, item.kept, result)
            del result  # one full-resolution decision in memory at a time
        session.view = writer.finish(session.items, method=session.method, seconds=session.seconds,
                                     threshold=threshold, random_weights=self.models.random_weights)
        return session.view


def _check_readable(items: Sequence[Item]) -> None:
    if not any(item.error is None for item in items):
        raise UsageError("no image could be read: " + "; ".join(f"{it.name}: {it.error}" for it in items))
