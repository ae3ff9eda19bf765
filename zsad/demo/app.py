""":class:`DemoApp`: one per process, it owns the model, the visitors' sessions and the memory budget, and offers the
page's handlers as plain methods (testable without a browser or gradio)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zsad.demo.chat import Chat
from zsad.demo.config import DemoConfig, check_config
from zsad.demo.health import Health
from zsad.demo.memory import GIB, MIB, MemoryBudget, default_limit, resident_bytes, trim_heap
from zsad.demo.models import Models
from zsad.demo.service import Scoring, no_progress
from zsad.demo.sessions import Session, SessionStore
from zsad.demo.view import View

log = logging.getLogger("zsad.demo")

#: resident growth beyond the idle server that the memory budget sets aside for gradio, uvicorn and Python
SERVER_ALLOWANCE = 256 * MIB


class DemoApp:
    """The demo without its page: :meth:`analyse` (score), :meth:`render` (another threshold), :meth:`select` and
    :meth:`ask` (the chat), :meth:`health`. :meth:`launch` serves the page (:mod:`zsad.demo.page`)."""

    def __init__(self, config: DemoConfig) -> None:
        check_config(config)
        self.config = config
        self.models = Models(config)
        self.sessions = SessionStore(config.max_sessions, config.session_ttl_s)
        limit = int(config.max_memory_gb * GIB) if config.max_memory_gb is not None else default_limit()
        self.budget = MemoryBudget(limit, baseline=resident_bytes() + SERVER_ALLOWANCE,
                                   kept=self.sessions.kept_bytes, make_room=self.sessions.make_room,
                                   wait_s=config.memory_wait_s)
        self.root = Path(tempfile.mkdtemp(prefix="zsad-demo-"))
        try:
            self.scoring = Scoring(config, self.models, self.budget, self.root)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.samples = self.scoring.samples
        self.chat = Chat(self.budget, self.models.costs)
        self.monitor = Health(self.budget, self.sessions, config.health_every)
        self.blocks = None  # the page, once built

    @property
    def random_weights(self) -> bool | None:
        """Whether the loaded backbone has random weights (None before it is loaded)."""
        return self.models.random_weights

    def detector(self, method: str, class_name: str | None = None, adapter: str | None = None):
        return self.models.detector(method, class_name, adapter)

    def warm_up(self) -> None:
        """Load the default detector (and the LVLM) at start-up, so a missing weight file fails ``zsad demo``
        at once and the first visitor does not wait. Adapters given at start-up are checked here too (kind,
        backbone, tensors), so the page never offers one that fails when a visitor picks it."""
        self.models.check_adapters()
        self.models.detector("auto", self.config.class_name or None)
        if self.config.lvlm:
            self.chat.load_lvlm(self.config)
        trim_heap()
        self.budget.baseline = resident_bytes() + SERVER_ALLOWANCE  # the idle server, model loaded
        if self.budget.baseline >= self.budget.limit:
            log.warning("demo: the memory budget (%.1f GB) is below the loaded model's footprint (%.1f GB): every "
                        "scoring request will be refused; raise --max-memory-gb", self.budget.limit / GIB,
                        self.budget.baseline / GIB)

    # -- the page's handlers -----------------------------------------------------------------------------------
    def analyse(self, files: Sequence[str] | None, samples: Sequence[str] | None, class_name: str | None,
                method: str, adapter: str | None, threshold: float,
                progress: Callable[..., Any] = no_progress) -> Session:
        """Score the uploads and picked samples (see :meth:`zsad.demo.service.Scoring.score`)."""
        return self.scoring.score(files, samples, class_name, method, adapter, threshold, progress)

    def score(self, previous: str | None, files: Sequence[str] | None, samples: Sequence[str] | None,
              class_name: str | None, method: str, adapter: str | None, threshold: float,
              progress: Callable[..., Any] = no_progress) -> tuple[str, Session]:
        """A visitor's scoring request: the new session replaces ``previous`` (its files and maps are removed);
        returns the new session's id and the session (its :attr:`~Session.view` is what the page shows)."""
        try:
            session = self.analyse(files, samples, class_name, method, adapter, threshold, progress)
            sid = self.sessions.add(session)
            self.sessions.drop(previous)
            return sid, session
        finally:
            self.monitor.count_request()
            trim_heap()

    def render(self, session: Session, threshold: float, progress: Callable[..., Any] = no_progress) -> View:
        """Overlays, table and CSV of ``session`` decided at ``threshold`` (from the kept maps: no re-scoring)."""
        return self.scoring.render(session, threshold, progress)

    def select(self, session: Session | None, index: int) -> list[dict[str, str]]:
        """Make gallery image ``index`` (counted over scored images) the one the chat is about."""
        return self.chat.select(session, index)

    def chat_label(self, session: Session | None) -> str:
        return self.chat.label(session)

    def ask(self, session: Session | None, question: str) -> list[dict[str, str]]:
        """Answer ``question`` about the selected image with the dialogue module (grounded in its result, or the
        LVLM when ``--lvlm`` was given); returns the chat of that image."""
        return self.chat.ask(session, question)

    def health(self) -> dict[str, Any]:
        """Live sessions, memory and queue, for ``/health``, the page's footer and the log."""
        return self.monitor.report()

    def health_line(self) -> str:
        return self.monitor.line()

    # -- serving -----------------------------------------------------------------------------------------------
    def build(self):
        """The gradio page (:func:`zsad.demo.page.build`)."""
        from zsad.demo import page

        self.blocks = page.build(self)
        self.monitor.queued = lambda: page.queued(self.blocks)
        return self.blocks

    def launch(self, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True, quiet: bool = False):
        """Serve the page (and ``GET /health``); with ``block=False`` return at once (tests), then :meth:`close`."""
        from zsad.demo import page

        return page.launch(self, self.blocks or self.build(), host, port, block=block, quiet=quiet)

    def close(self) -> None:
        if self.blocks is not None:
            self.blocks.close(verbose=False)
        self.sessions.close_all()
        shutil.rmtree(self.root, ignore_errors=True)
