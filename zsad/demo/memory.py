"""How much memory the demo may use, what it uses now, and admission of work against that budget.

A public demo must never be OOM-killed: one visitor's 32 camera images decode to gigabytes before a model sees them.
So each scoring (or re-drawing) request first *reserves* what it will need at its peak, estimated from the image
headers (:class:`Costs`), and runs only when the budget has room: the server's idle size, what live sessions keep,
and what running requests reserved, plus the new request, must fit under the limit; and the measured resident size
must leave room too (it catches what the estimates miss). A request that does not fit waits (the least recently used
sessions are evicted to make room first) and is refused with a message after ``wait_s`` or when nothing running could
free memory. The operating system's view of the process (resident set) is read from ``/proc`` on Linux.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from zsad.errors import UsageError

MIB = 2**20
GIB = 2**30
#: share of the machine's memory (RAM, or the container's limit when lower) the demo takes by default
DEFAULT_SHARE = 0.75


class MemoryRefused(UsageError):
    """A request that cannot run within the demo's memory budget (now, or ever)."""


# ------------------------------------------------------------------------------------------------ the machine


def machine_memory() -> int:
    """Bytes of memory this process may use: physical RAM, or the cgroup (container) limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (total or int(text) + 1):
            total = int(text)
    return total or 8 * GIB


def default_limit() -> int:
    """The default budget: :data:`DEFAULT_SHARE` of :func:`machine_memory` (the rest is the system's)."""
    return int(DEFAULT_SHARE * machine_memory())


def resident_bytes() -> int:
    """The process's resident set size now (Linux ``/proc``; elsewhere psutil, else the peak so far)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library's symbols as linked into this process (glibc's ``malloc_trim`` and ``mallopt`` when present)."""
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def trim_heap() -> None:
    """Hand freed heap pages back to the system (glibc ``malloc_trim``), so the resident size follows what is used.

    Large maps are freed into glibc's per-thread arenas, which keep them; without this the resident size only
    ever grows. A no-op where glibc is absent."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def limit_malloc_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas (``M_ARENA_MAX``) for this process. The server's worker threads each grow an arena
    of their own otherwise (up to 8 per core), and freed memory stays fragmented across them. Call it before
    threads start; returns whether it applied (glibc only)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    m_arena_max = -8
    return bool(libc.mallopt(m_arena_max, count))


# ------------------------------------------------------------------------------------------------ the estimates


@dataclass(frozen=True)
class Costs:
    """Peak bytes a request needs, from what is known before decoding: image sizes and the backbone's token grid.

    Per source pixel while scoring: decoded RGB(A) 4, the method's full-size float32 map 4, the decided map 4, the
    mask 1, region labels (int32) 4, upsampling and conversion temporaries 7: 24 bytes. Per image, the backbone's
    tokens (``tokens x width`` float32) for up to 16 copies (4 layers x 3 MuSc aggregation degrees, plus work space).
    Re-drawing decides one image at a time: 16 bytes per pixel of the largest image.
    """

    tokens_per_image: int = 0
    width: int = 0
    bytes_per_source_pixel: int = 24
    bytes_per_render_pixel: int = 16
    token_copies: int = 16
    overhead: int = 32 * MIB  # Python objects, PNG encoders, payloads

    def scoring(self, pixels: Sequence[int]) -> int:
        model = len(pixels) * self.tokens_per_image * self.width * 4 * self.token_copies
        return self.overhead + self.bytes_per_source_pixel * sum(pixels) + model

    def render(self, pixels: Sequence[int]) -> int:
        return self.overhead + self.bytes_per_render_pixel * max(pixels, default=0)


# ------------------------------------------------------------------------------------------------ the budget


@dataclass(frozen=True)
class Usage:
    """One look at the budget (bytes)."""

    limit: int
    resident: int
    baseline: int
    kept: int
    reserved: int
    running: int
    waiting: int
    refused: int

    @property
    def accounted(self) -> int:
        return self.baseline + self.kept + self.reserved


class MemoryBudget:
    """Admission of requests against a memory limit: :meth:`reserve` blocks until a request fits, or refuses it.

    ``baseline`` is the server's idle size (model loaded) plus an allowance for the framework's own growth;
    ``kept()`` the bytes live sessions hold; ``make_room(n)`` evicts idle sessions worth about ``n`` bytes (least
    recently used first) and returns what it freed. The callbacks are called without this budget's lock held.
    """

    def __init__(self, limit: int, *, baseline: int, kept: Callable[[], int] = lambda: 0,
                 make_room: Callable[[int], int] = lambda n: 0, wait_s: float = 30.0,
                 measure: Callable[[], int] = resident_bytes) -> None:
        self.limit = int(limit)
        self.baseline = int(baseline)
        self.wait_s = float(wait_s)
        self._kept = kept
        self._make_room = make_room
        self._measure = measure
        self._cond = threading.Condition()
        self._reserved = 0
        self._running = 0
        self._waiting = 0
        self._refused = 0

    def usage(self) -> Usage:
        with self._cond:
            reserved, running, waiting, refused = self._reserved, self._running, self._waiting, self._refused
        return Usage(limit=self.limit, resident=self._measure(), baseline=self.baseline, kept=self._kept(),
                     reserved=reserved, running=running, waiting=waiting, refused=refused)

    def _shortfall(self, nbytes: int, kept: int, resident: int) -> int:
        """Bytes missing for a request of ``nbytes`` now (0: it fits). Call with the lock held."""
        accounted = self.baseline + kept + self._reserved
        # what the process holds beyond the running requests' reservations (leaks, fragmentation, estimate errors)
        measured = resident - self._reserved
        return max(0, max(accounted, measured) + self._reserved + nbytes - self.limit)

    @contextmanager
    def reserve(self, nbytes: int, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the ``with`` block; wait for room (``on_wait`` is told once) or raise
        :class:`MemoryRefused` with a message for the visitor."""
        nbytes = int(nbytes)
        if self.baseline + nbytes > self.limit:
            self._count_refusal()
            raise MemoryRefused(
                f"these images need about {nbytes / GIB:.1f} GB to score, more than this demo's memory budget "
                f"leaves free even when idle ({max(0, self.limit - self.baseline) / GIB:.1f} GB): score fewer or "
                "smaller images")
        deadline = time.monotonic() + self.wait_s
        told = False
        freed_once = False
        with self._cond:
            self._waiting += 1
        try:
            while True:
                kept, resident = self._kept(), self._measure()
                with self._cond:
                    short = self._shortfall(nbytes, kept, resident)
                    if short == 0:
                        self._reserved += nbytes
                        self._running += 1
                        break
                    running = self._running
                if not freed_once:  # evict idle sessions and return freed heap before waiting on others
                    freed_once = True
                    self._make_room(short)
                    trim_heap()
                    continue
                remaining = deadline - time.monotonic()
                if running == 0 or remaining <= 0:
                    self._count_refusal()
                    raise MemoryRefused(
                        f"the demo is out of memory right now ({resident / GIB:.1f} GB in use, limit "
                        f"{self.limit / GIB:.1f} GB): try again in a minute, or score fewer or smaller images")
                if on_wait is not None and not told:
                    told = True
                    on_wait()
                with self._cond:
                    self._cond.wait(timeout=min(remaining, 1.0))
                freed_once = False  # something finished (or a second passed): try evicting again
        finally:
            with self._cond:
                self._waiting -= 1
        try:
            yield
        finally:
            with self._cond:
                self._reserved -= nbytes
                self._running -= 1
                self._cond.notify_all()

    def _count_refusal(self) -> None:
        with self._cond:
            self._refused += 1
