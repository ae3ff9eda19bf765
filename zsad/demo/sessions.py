"""Live visitor sessions, bounded in number and idle time: the demo's memory must not grow with its visitors.

A page's ``gr.State`` holds only a session id; the session itself (kept results, chats, its folder of files) lives
here. Beyond ``max_sessions`` the least recently used session is evicted; a session idle for ``ttl_s`` expires; the
memory budget may evict idle sessions to make room for new work. Closing a session removes its folder. A visitor
whose session is gone is told to score again (:class:`SessionExpired`).

:class:`Session` is what the demo keeps per visitor: the :class:`Item` of each image of the last run (its kept
result, or why it could not be scored), the view shown now, and the chats.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from zsad.demo.kept import KeptImage
from zsad.demo.view import View
from zsad.errors import UsageError

EXPIRED_MESSAGE = "your session expired, score again"


class SessionExpired(UsageError):
    """The visitor's session was evicted or timed out."""

    def __init__(self) -> None:
        super().__init__(EXPIRED_MESSAGE)


class Closable(Protocol):
    """What the store needs of a session: its bytes in memory, whether a request is using it, and how to end it."""

    @property
    def nbytes(self) -> int: ...

    def busy(self) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class StoreStats:
    live: int
    kept_bytes: int
    evicted: int  # by the cap or to make room for new work
    expired: int  # idle beyond the time to live


class SessionStore:
    """Sessions by id, least recently used first. Thread-safe; sessions are closed outside the store's lock."""

    def __init__(self, max_sessions: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_sessions < 1 or ttl_s <= 0:
            raise UsageError(f"max_sessions must be >= 1 and the session time to live > 0, got {max_sessions} "
                             f"and {ttl_s}")
        self.max_sessions = int(max_sessions)
        self.ttl_s = float(ttl_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._live: OrderedDict[str, tuple[Closable, float]] = OrderedDict()  # id -> (session, last used)
        self._evicted = 0
        self._expired = 0

    def add(self, session: Closable) -> str:
        """Keep ``session`` under a new id; the least recently used beyond the cap are evicted (and closed)."""
        sid = secrets.token_urlsafe(16)
        with self._lock:
            self._live[sid] = (session, self._clock())
            gone = self._expire_locked()
            while len(self._live) > self.max_sessions:
                gone.append(self._live.popitem(last=False)[1][0])
                self._evicted += 1
        _close(gone)
        return sid

    def get(self, sid: str | None) -> Closable:
        """The live session ``sid`` (now the most recently used), or :class:`SessionExpired`."""
        with self._lock:
            gone = self._expire_locked()
            entry = self._live.get(sid) if sid else None
            if entry is not None:
                self._live[sid] = (entry[0], self._clock())
                self._live.move_to_end(sid)
        _close(gone)
        if entry is None:
            raise SessionExpired()
        return entry[0]

    def drop(self, sid: str | None) -> None:
        """End session ``sid`` now (a newer scoring run replaced it, or the page's state expired)."""
        with self._lock:
            entry = self._live.pop(sid, None) if sid else None
        if entry is not None:
            entry[0].close()

    def sweep(self) -> int:
        """Close the sessions idle beyond the time to live; returns how many."""
        with self._lock:
            gone = self._expire_locked()
        _close(gone)
        return len(gone)

    def make_room(self, nbytes: int) -> int:
        """Evict idle sessions, least recently used first, until about ``nbytes`` are freed; returns bytes freed.
        Sessions a request is using are skipped."""
        freed, gone = 0, []
        with self._lock:
            for sid, (session, _used) in list(self._live.items()):
                if freed >= nbytes:
                    break
                if session.busy():
                    continue
                del self._live[sid]
                freed += session.nbytes
                gone.append(session)
                self._evicted += 1
        _close(gone)
        return freed

    def kept_bytes(self) -> int:
        with self._lock:
            return sum(session.nbytes for session, _ in self._live.values())

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(live=len(self._live), kept_bytes=sum(s.nbytes for s, _ in self._live.values()),
                              evicted=self._evicted, expired=self._expired)

    def close_all(self) -> None:
        with self._lock:
            gone = [session for session, _ in self._live.values()]
            self._live.clear()
        _close(gone)

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def _expire_locked(self) -> list[Closable]:
        now, gone = self._clock(), []
        while self._live:
            sid, (session, used) = next(iter(self._live.items()))
            if now - used <= self.ttl_s:
                break
            del self._live[sid]
            gone.append(session)
            self._expired += 1
        return gone


def _close(sessions: list[Closable]) -> None:
    for session in sessions:
        session.close()


# ------------------------------------------------------------------------------------------------ one visitor


@dataclass
class Item:
    """One image of a run: its safe display name, and what the session keeps of its result, or its error."""

    name: str
    kept: KeptImage | None = None
    error: str | None = None


@dataclass
class Session:
    """One visitor's last run, kept by the :class:`SessionStore`; the page's state holds its id."""

    items: list[Item]
    class_name: str
    method: str
    folder: Path  # this session's files (raw maps, overlays, CSV); removed when the session ends
    threshold: float
    seconds: float = 0.0
    selected: int = 0
    view: View | None = None  # what the page shows now (drawn at ``threshold``)
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
