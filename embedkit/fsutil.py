"""Atomic writes, locks and fsync: what every save in embedkit stands on (DESIGN.md, "Rules that hold everywhere").

- :func:`atomic_write_bytes` writes a file beside its target, fsyncs it, renames it over the target and fsyncs
  the folder: a reader (or a crash) sees the old file or the new one, never part of one.
- :func:`atomic_directory` does the same for a folder. A folder cannot be renamed over a non-empty one, so on
  Linux the new folder and the old one trade places in one ``renameat2(RENAME_EXCHANGE)`` call: the path names a
  complete folder at every instant. Where the system cannot exchange, the old folder steps aside before the new
  one moves in; a crash between those two renames is repaired by :func:`recover_directory`, which the next
  :func:`atomic_directory` on the path calls, and which puts the old folder back.
- :func:`file_lock` is an exclusive advisory lock (``flock``) on a lock file, for writers that must not run at
  once (the load-modify-save of an index); a second writer waits up to a timeout, then gets a one-line error.
- Temporary folders are *owned*: their creator holds an ``flock`` on the folder while it lives
  (:func:`owned_directory`). A process that is killed loses its locks, so :func:`remove_if_abandoned` can tell a
  dead writer's leftovers (no lock) from a live writer's work (locked) without guessing from ages or pids.
- :func:`crash_point` is the hook of the crash tests: each rename and fsync of a save passes through one, and
  ``EMBEDKIT_CRASH_AT`` makes the process exit there, as a kill would.

Locks are POSIX ``flock`` locks: advisory (only embedkit's writers honour them) and released by the kernel when
their holder dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from embedkit.errors import EmbedkitError

CRASH_ENV = "EMBEDKIT_CRASH_AT"
"""``EMBEDKIT_CRASH_AT=3`` exits at the third crash point a process reaches; ``=exchange`` at the first point of
that name. For tests only: it simulates a writer killed at that step."""
CRASH_EXIT_CODE = 86
LOCK_POLL_SECONDS = 0.05  # how often a waiting writer retries a lock (flock itself cannot time out)
_RENAME_EXCHANGE = 2  # from <linux/fs.h>
_AT_FDCWD = -100
_crash_points_reached = 0
_held_locks = threading.local()  # the lock files this thread holds, so that a nested file_lock does not deadlock


class LockTimeoutError(EmbedkitError):
    """Another process held a lock for longer than the caller was willing to wait."""


# -- crash injection -------------------------------------------------------------------------------------------
def crash_point(step: str) -> None:
    """Exit at once, with no clean-up (``os._exit``), when ``EMBEDKIT_CRASH_AT`` names ``step`` or its number.

    Points are counted from 1 in the order a process reaches them, so a test can kill a save at each of its
    steps in turn (1, 2, 3, ... until the save completes) without knowing how many there are.
    """
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    global _crash_points_reached
    _crash_points_reached += 1
    if wanted in (step, str(_crash_points_reached)):
        sys.stderr.write(f"embedkit: crash injected at point {_crash_points_reached} ({step})\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)


# -- fsync -----------------------------------------------------------------------------------------------------
def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's data to the disk: a rename that follows cannot outlive the data it names."""
    crash_point("fsync-file")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (names created, renamed or removed in it) to the disk."""
    crash_point("fsync-directory")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file under ``root``, then every folder, deepest first, ``root`` last."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(os.path.join(folder, name))
        fsync_directory(folder)


# -- files and folders -----------------------------------------------------------------------------------------
def new_directory(parent: str | os.PathLike[str], prefix: str, mode: int = 0o777) -> Path:
    """A new empty folder ``parent/<prefix><random>`` with ``mode`` less the umask: by default what the umask gives
    (``tempfile.mkdtemp`` always makes 0700, which made index folders unreadable to the group meant to share them);
    0o700 for a private working folder."""
    while True:
        path = Path(parent) / f"{prefix}{secrets.token_hex(6)}"
        try:
            path.mkdir(mode)
        except FileExistsError:
            continue
        return path


def current_umask() -> int:
    """The process's umask, read from ``/proc/self/status`` where Linux shows it (setting it to read it, the
    fallback, briefly changes it for every thread)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give a file that a library wrote with a mode of its own (safetensors: 0600) the mode the umask gives."""
    os.chmod(path, 0o666 & ~current_umask())


def remove_path(path: str | os.PathLike[str]) -> None:
    """Remove a file or a folder tree; a path that is already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it, an fsync and a rename; the file's mode
    follows the umask."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(6)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            crash_point("fsync-file")
            os.fsync(file.fileno())
        crash_point("replace")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(target.parent)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new folder beside ``path``; once the block ends it replaces ``path`` (see the module doc), and
    if the block raises it is removed. The folder's files are fsynced before the swap."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    tmp, fd = owned_directory(target.parent, f".{target.name}.tmp-")
    try:
        try:
            yield tmp
        except BaseException:
            remove_path(tmp)
            raise
        fsync_tree(tmp)
        _swap_in(tmp, target)
    finally:
        os.close(fd)


def _swap_in(tmp: Path, target: Path) -> None:
    """Put the complete folder ``tmp`` at ``target``, removing what was there."""
    parent = target.parent
    if not target.exists():
        crash_point("rename")
        os.replace(tmp, target)
        fsync_directory(parent)
    elif _exchange(tmp, target):
        fsync_directory(parent)
        remove_path(tmp)  # it now holds the previous version
    else:
        _swap_in_two_steps(tmp, target)


def _swap_in_two_steps(tmp: Path, target: Path) -> None:
    """The swap where the system cannot exchange two names: the old folder steps aside, locked, so that
    :func:`recover_directory` knows it belongs to a live save; if the process dies between the renames, the lock
    goes with it and the next save on ``target`` puts the old folder back."""
    old = target.parent / f".{target.name}.old-{secrets.token_hex(6)}"
    fd = lock_existing(target)
    if fd is None:  # removed by someone else meanwhile: there is nothing to step aside
        crash_point("rename")
        os.replace(tmp, target)
        fsync_directory(target.parent)
        return
    try:
        crash_point("rename")
        os.replace(target, old)
        crash_point("rename")
        os.replace(tmp, target)
        fsync_directory(target.parent)
        remove_path(old)
    finally:
        os.close(fd)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's ``renameat2`` on Linux, else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one atomic step; ``False`` where the kernel or filesystem cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    crash_point("exchange")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def recover_directory(path: str | os.PathLike[str]) -> None:
    """Repair what crashed saves of ``path`` left beside it: when ``path`` is missing, put back the newest
    ``.NAME.old-*`` folder (the complete previous version, stepped aside just before the crash); then remove the
    other ``.NAME.tmp-*`` and ``.NAME.old-*`` leftovers. Those still locked belong to a live save and stay."""
    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        return
    name = target.name
    olds = [p for p in parent.iterdir() if p.name.startswith(f".{name}.old-")]
    if not target.exists():
        for old in sorted(olds, key=lambda p: p.stat().st_mtime, reverse=True):
            if _restore(old, target):
                break
    for leftover in parent.iterdir():
        if leftover.name.startswith((f".{name}.tmp-", f".{name}.old-")):
            remove_if_abandoned(leftover)


def _restore(old: Path, target: Path) -> bool:
    """Rename an abandoned stepped-aside folder back to ``target``; ``False`` when a live save holds it."""
    fd = lock_existing(old, wait=False)
    if fd is None:
        return False
    try:
        os.replace(old, target)
        fsync_directory(target.parent)
    finally:
        os.close(fd)
    return True


# -- locks -----------------------------------------------------------------------------------------------------
def _try_flock(fd: int, operation: int) -> bool:
    """``flock`` without waiting: ``True`` when the lock was taken."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(path: str | os.PathLike[str], fd: int) -> bool:
    """Whether ``path`` still names the file or folder that ``fd`` has open."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def lock_existing(path: str | os.PathLike[str], *, shared: bool = False, wait: bool = True) -> int | None:
    """An open descriptor of the file or folder at ``path`` that holds an ``flock`` on it; ``None`` when ``path``
    is gone (or, with ``wait=False``, another process holds a conflicting lock). Closing it releases the lock.

    The lock is on what ``path`` named when it was opened, so once it is held ``path`` is checked again: a
    remover that held the lock first has removed or renamed it, and then the caller gets ``None`` too.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        if wait:
            fcntl.flock(fd, operation)
        elif not _try_flock(fd, operation):
            os.close(fd)
            return None
        if not _same_file(path, fd):
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def owned_directory(parent: str | os.PathLike[str], prefix: str, mode: int = 0o777) -> tuple[Path, int]:
    """A new folder ``parent/<prefix><random>`` (``mode`` as for :func:`new_directory`) and a descriptor holding an
    exclusive lock on it, the mark that its owner is alive (:func:`remove_if_abandoned` leaves it alone). Close
    the descriptor once the folder is removed or handed over."""
    while True:
        path = new_directory(parent, prefix, mode)
        fd = lock_existing(path)
        if fd is not None:
            return path, fd
        # a sweeper saw it unlocked between mkdir and lock, and removed it: take another name


def remove_if_abandoned(path: str | os.PathLike[str]) -> bool:
    """Remove the file or folder at ``path`` when no process holds a lock on it; ``True`` when it was removed."""
    try:
        fd = lock_existing(path, wait=False)
    except OSError:  # another user's, or unreadable: not ours to remove
        return False
    if fd is None:
        return False
    try:
        remove_path(path)
    finally:
        os.close(fd)
    return True


def _held() -> set[str]:
    if not hasattr(_held_locks, "paths"):
        _held_locks.paths = set()
    return _held_locks.paths


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], timeout: float | None = None, what: str | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on the lock file ``path`` (created when missing) inside the block.

    Another process, or another thread, waits for it up to ``timeout`` seconds (``None``: as long as it takes;
    ``0``: not at all) and then raises :class:`LockTimeoutError`, which names ``what`` (default: the lock file)
    and the holder. Nested use by one thread is fine: the inner block runs under the outer lock. The lock file
    stays when the block ends: removing it would let a waiter lock the removed file while a newcomer locks a new
    one of the same name.
    """
    key = os.path.abspath(path)
    held = _held()
    if key in held:
        yield
        return
    Path(key).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _acquire(fd, key, timeout, what or key)
        _note_holder(fd)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
    finally:
        os.close(fd)


def _acquire(fd: int, path: str, timeout: float | None, what: str) -> None:
    """Take the exclusive lock on ``fd``, polling until ``timeout`` seconds have passed."""
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + max(timeout, 0.0)
    while not _try_flock(fd, fcntl.LOCK_EX):
        if time.monotonic() >= deadline:
            raise LockTimeoutError(
                f"{what} is locked by another writer ({_holder(path)}); gave up after waiting {timeout:g} s "
                "(a longer --lock-timeout waits longer)"
            )
        time.sleep(LOCK_POLL_SECONDS)


def _note_holder(fd: int) -> None:
    """Write who holds the lock into the lock file, for the error message of a writer that waits in vain."""
    note = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}\n".encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, note, 0)


def _holder(path: str) -> str:
    with contextlib.suppress(OSError):
        note = Path(path).read_text(encoding="utf-8", errors="replace").strip()
        if note:
            return note
    return "holder unknown"
