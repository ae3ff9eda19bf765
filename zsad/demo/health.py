"""The demo's health: live sessions, memory and queue, for ``GET /health``, the page's footer and the log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from zsad.demo.memory import MIB, MemoryBudget
from zsad.demo.sessions import SessionStore

log = logging.getLogger("zsad.demo")


class Health:
    """Counts scoring requests and reports the server's state; a line goes to the log every ``every`` requests.
    ``queued`` tells how many events wait in the page's queue (set by the page once it is built)."""

    def __init__(self, budget: MemoryBudget, sessions: SessionStore, every: int) -> None:
        self.budget = budget
        self.sessions = sessions
        self.every = every
        self.queued: Callable[[], int] = lambda: 0
        self._requests = 0
        self._lock = threading.Lock()

    def count_request(self) -> None:
        with self._lock:
            self._requests += 1
            count = self._requests
        if count % self.every == 0:
            log.info("demo: %s", self.line())

    def report(self) -> dict[str, Any]:
        usage, stats = self.budget.usage(), self.sessions.stats()
        return {"sessions": stats.live, "max_sessions": self.sessions.max_sessions,
                "kept_mb": round(stats.kept_bytes / MIB, 1), "resident_mb": round(usage.resident / MIB, 1),
                "baseline_mb": round(usage.baseline / MIB, 1), "reserved_mb": round(usage.reserved / MIB, 1),
                "limit_mb": round(usage.limit / MIB, 1), "running": usage.running, "waiting": usage.waiting,
                "queued": self.queued(), "requests": self._requests, "refused": usage.refused,
                "evicted": stats.evicted, "expired": stats.expired}

    def line(self) -> str:
        h = self.report()
        return (f"server: {h['sessions']} of {h['max_sessions']} sessions ({h['kept_mb']:.0f} MB kept) · memory "
                f"{h['resident_mb'] / 1024:.2f} of {h['limit_mb'] / 1024:.1f} GB · {h['running']} running, "
                f"{h['waiting']} waiting for memory, {h['queued']} queued · {h['requests']} requests, "
                f"{h['refused']} refused")
