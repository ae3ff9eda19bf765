"""Small file helpers shared by the writers of ``zsad score``, ``zsad evaluate``, adapters and training runs:
files and whole folders replaced at once, so a crash leaves the old version or the new one, never a mix."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file in the same folder and ``os.replace``, so a reader (or a resumed
    run) sees either the old file or the whole new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_json(path: Path, error: type[Exception], what: str = "JSON") -> Any:
    """Parse a JSON file; an unreadable or malformed file raises ``error`` naming the file (never a traceback)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: cannot read {what} ({exc})") from None


# -- whole folders, swapped in at once ------------------------------------------------------------------------
#
# A folder whose files belong together (adapter.json + weights.safetensors, a training checkpoint's weights + its
# optimizer state) is written whole into a hidden sibling ``.NAME.zsad-new.HOST.PID.TOKEN`` and then swapped in
# with one rename. On Linux the swap is renameat2(RENAME_EXCHANGE): the path names the old folder or the new one,
# never nothing, and the old one is then removed under the temporary name. Elsewhere (or where the file system
# refuses the exchange) the old folder is first renamed aside to ``.NAME.zsad-old.HOST.PID.TOKEN`` and the new one
# renamed in; a crash between those two renames leaves the old folder aside, and :func:`settle_dir` (which the
# readers call) puts it back. Siblings left by dead writers are removed by the next write.

_SIBLING = re.compile(r"^\.(?P<stem>.+)\.zsad-(?P<role>new|old)\.(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.[0-9a-f]+$")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None  # the libc function once looked up; False when there is none
_writing: set[str] = set()  # real paths of temporary folders being written by this process (for nesting)
_writing_lock = threading.Lock()


def _stem(name: str) -> str:
    """The part of a sibling's name that says whose sibling it is (long names are shortened to stay legal)."""
    if len(name) <= 120:
        return name
    return f"{name[:80]}~{hashlib.sha1(name.encode('utf-8', 'surrogateescape')).hexdigest()[:12]}"


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _sibling(target: Path, role: str) -> Path:
    return target.with_name(f".{_stem(target.name)}.zsad-{role}.{_host_tag()}.{os.getpid()}.{secrets.token_hex(4)}")


def _siblings(target: Path) -> list[tuple[Path, str, bool]]:
    """(path, role, writer known to be dead) of every temporary sibling of ``target`` left by writers."""
    found = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return []
    stem, host = _stem(target.name), _host_tag()
    for entry in entries:
        match = _SIBLING.match(entry.name)
        if match and match["stem"] == stem:
            dead = match["host"] == host and not _pid_alive(int(match["pid"]))
            found.append((Path(entry.path), match["role"], dead))
    return found


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` (on this machine) still runs; unknown counts as alive."""
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def settle_dir(target: str | Path) -> Path:
    """The folder to read for ``target``. Normally ``target`` itself; when a writer died between renaming the old
    folder aside and renaming the new one in, the old one is put back (or, while that writer still runs, its
    path is returned to read from). Leftover temporary folders never count."""
    target = Path(target)
    if os.path.lexists(target):
        return target
    aside = [(path, dead) for path, role, dead in _siblings(target) if role == "old"]
    for path, dead in aside:
        if dead:
            try:
                os.rename(path, target)
                _fsync_dir(target.parent)
                log.warning("restored %s, left aside by a writer that stopped mid-swap", target)
                return target
            except OSError:
                if os.path.lexists(target):
                    return target
    if aside:
        return aside[0][0]
    return target


def _clean_leftovers(target: Path) -> None:
    """Before a write: put back a folder a dead writer left aside, and remove dead writers' temporary folders."""
    settle_dir(target)
    for path, _, dead in _siblings(target):
        if dead:
            _remove_tree(path)


def _fsync_path(path: str, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return  # folders cannot be opened on Windows; files we cannot open are not ours to flush
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":
        _fsync_path(str(path), directory=True)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(os.path.join(folder, name))
        _fsync_dir(Path(folder))


def _link_tree(src: Path, dst: Path) -> None:
    """Put a copy of ``src`` at ``dst`` made of hard links where the file system allows (files are only ever
    replaced, never changed in place, so sharing them is safe), else real copies."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        shutil.copymode(src, dst)
        for entry in os.scandir(src):
            _link_tree(Path(entry.path), dst / entry.name)
    else:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths at once (Linux renameat2 RENAME_EXCHANGE). False where that is not available."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                function = ctypes.CDLL(None, use_errno=True).renameat2
                function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                function.restype = ctypes.c_int
                _renameat2 = function
            except (OSError, AttributeError):  # no libc symbol (glibc < 2.28, musl without it)
                pass
    if not _renameat2:
        return False
    import ctypes

    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # old kernel, file system without it
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _replace_contents(new: Path, target: Path, keep_others: bool) -> None:
    """Last resort when ``target`` cannot be renamed (a mount point): move the new entries in one by one, each
    whole (files by ``os.replace``)."""
    log.warning("%s cannot be replaced at once (a mount point?); its files are replaced one by one", target)
    names = set()
    for entry in os.scandir(new):
        names.add(entry.name)
        dest = target / entry.name
        if os.path.isdir(dest) and not os.path.islink(dest):
            old = _sibling(dest, "old")
            os.rename(dest, old)
            os.replace(entry.path, dest)
            _remove_tree(old)
        else:
            os.replace(entry.path, dest)
    if not keep_others:
        for entry in os.scandir(target):
            if entry.name in names:
                continue
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(Path(entry.path))
            else:
                os.unlink(entry.path)
    _fsync_dir(target)
    _remove_tree(new)


def _swap_in(new: Path, target: Path, keep_others: bool) -> None:
    """Make the complete folder ``new`` be ``target`` with one rename (see the section comment)."""
    if not os.path.lexists(target):
        os.rename(new, target)
        _fsync_dir(target.parent)
        return
    try:
        if _exchange(new, target):
            _fsync_dir(target.parent)
            _remove_tree(new)  # the old folder, now under the temporary name
            return
        aside = _sibling(target, "old")
        os.rename(target, aside)
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.EXDEV):
            _replace_contents(new, target, keep_others)
            return
        raise
    os.rename(new, target)  # a crash just before this leaves the old folder aside, for settle_dir
    _fsync_dir(target.parent)
    _remove_tree(aside)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@contextmanager
def atomic_dir(target: str | Path, *, keep_others: bool = True) -> Iterator[Path]:
    """Write the whole folder ``target`` at once::

        with atomic_dir(out) as folder:       # a new, empty hidden sibling of out
            write_weights(folder / "weights.safetensors")
            write_config(folder / "adapter.json")
        # here out is the new folder, whole; had the block raised (or the process died), out would be the old one

    When the block ends normally, entries of the current ``target`` that the block did not write are carried into
    the new folder when ``keep_others`` (hard links where possible, else copies; so a training log or a checkpoint
    sub-folder stays), every file is flushed to disk, and the new folder replaces ``target`` with one rename.
    ``atomic_dir`` on a folder inside one that this process is already writing yields it as it is (the outer
    swap covers it), so helpers that save atomically can be called inside the block.
    """
    target = Path(os.path.abspath(target))
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    real = os.path.realpath(target)
    with _writing_lock:
        nested = any(_inside(real, folder) for folder in _writing)
    if nested:
        target.mkdir(parents=True, exist_ok=True)
        yield target
        return
    if os.path.lexists(target) and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(target)
    new = _sibling(target, "new")
    new.mkdir()
    real_new = os.path.realpath(new)
    with _writing_lock:
        _writing.add(real_new)
    swapped = False
    try:
        yield new
        with _writing_lock:
            _writing.discard(real_new)
        if target.is_dir():
            shutil.copymode(target, new)
            if keep_others:
                for entry in os.scandir(target):
                    if not os.path.lexists(new / entry.name):
                        _link_tree(Path(entry.path), new / entry.name)
        _fsync_tree(new)
        try:
            cwd = os.getcwd()
        except OSError:
            cwd = ""
        _swap_in(new, target, keep_others)
        swapped = True
        if cwd and _inside(cwd, real):  # this process stood in the old folder: stand in the new one
            try:
                os.chdir(cwd)
            except OSError:
                os.chdir(target)
    finally:
        with _writing_lock:
            _writing.discard(real_new)
        if not swapped:
            _remove_tree(new)
