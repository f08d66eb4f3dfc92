"""Atomic writes, owned folders, locks and crash injection (embedkit.fsutil).

Crashes are real: a forked child sets ``EMBEDKIT_CRASH_AT`` and dies with ``os._exit`` at that point of a save,
as a killed process would, leaving whatever it had written; the parent then checks what is on disk.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import held_elsewhere

from embedkit import fsutil
from embedkit.errors import EmbedkitError
from embedkit.fsutil import (
    CRASH_ENV,
    CRASH_EXIT_CODE,
    LockTimeoutError,
    atomic_directory,
    atomic_write_bytes,
    file_lock,
    owned_directory,
    recover_directory,
    remove_if_abandoned,
)


def run_forked(function: Callable[[], None], crash_at: int | str | None = None) -> int:
    """Run ``function`` in a forked child (crashing at point ``crash_at``); its exit code."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            if crash_at is not None:
                os.environ[CRASH_ENV] = str(crash_at)
            function()
        except BaseException:  # noqa: BLE001  (report anything, then leave)
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the umask for one test."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def write_folder(target: Path, text: str) -> None:
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text(text)


def folder_text(target: Path) -> str:
    """The folder's one text, checking that it is whole (both files agree)."""
    a, b = (target / "a.txt").read_text(), (target / "sub" / "b.txt").read_text()
    assert a == b, "a half-written folder"
    return a


# -- atomic files and folders --------------------------------------------------------------------------------
def test_atomic_write_bytes_follows_the_umask_and_leaves_nothing_behind(tmp_path, umask) -> None:
    umask(0o027)
    atomic_write_bytes(tmp_path / "f", b"one")
    atomic_write_bytes(tmp_path / "f", b"two")
    assert (tmp_path / "f").read_bytes() == b"two" and os.listdir(tmp_path) == ["f"]
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o640  # mkstemp made 0600 whatever the umask


def test_the_umask_is_read_without_changing_it(tmp_path, umask) -> None:
    umask(0o027)
    assert fsutil.current_umask() == 0o027 and os.umask(0o027) == 0o027
    (tmp_path / "f").touch(mode=0o600)
    fsutil.follow_umask(tmp_path / "f")
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o640


def test_atomic_directory_replaces_and_follows_the_umask(tmp_path, umask) -> None:
    umask(0o022)
    write_folder(tmp_path / "out", "one")
    write_folder(tmp_path / "out", "two")
    assert folder_text(tmp_path / "out") == "two" and os.listdir(tmp_path) == ["out"]
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755  # mkdtemp made 0700
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("three")
        raise RuntimeError("boom")
    assert folder_text(tmp_path / "out") == "two" and os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_a_crash_at_any_step_of_atomic_directory_leaves_a_complete_folder(tmp_path, monkeypatch, exchange) -> None:
    """Kill the save at each of its crash points in turn; the folder is always the old one or the new one, and
    the next save (or recover_directory) repairs what the crash left."""
    if not exchange:
        monkeypatch.setattr(fsutil, "_exchange", lambda a, b: False)  # as where the system cannot exchange
    target = tmp_path / "out"
    write_folder(target, "v0")
    point = 1
    while True:
        code = run_forked(lambda text=f"v{point}": write_folder(target, text), crash_at=point)
        assert code in (0, CRASH_EXIT_CODE)
        recover_directory(target)  # what the next save, or an index reader, does first
        assert folder_text(target) in ("v0", *(f"v{i}" for i in range(1, point + 1)))
        if code == 0:
            break
        point += 1
    assert point >= 6  # fsync of two files and three folders, the rename(s): every one was a crash point
    assert folder_text(target) == f"v{point}" and os.listdir(tmp_path) == ["out"]


def test_recover_directory_puts_back_a_stepped_aside_folder_unless_its_save_is_alive(tmp_path) -> None:
    target = tmp_path / "out"
    write_folder(target, "old")
    os.rename(target, tmp_path / ".out.old-1234")  # a save of embedkit 0.1 killed between its two renames
    (tmp_path / ".out.tmp-abcd").mkdir()
    live, fd = owned_directory(tmp_path, ".out.tmp-")  # a save running now
    try:
        recover_directory(target)
        assert folder_text(target) == "old"
        assert sorted(os.listdir(tmp_path)) == sorted(["out", live.name])
    finally:
        os.close(fd)
    recover_directory(target)
    assert os.listdir(tmp_path) == ["out"]


def test_only_folders_whose_owner_died_are_removed(tmp_path) -> None:
    mine, fd = owned_directory(tmp_path, "work-")
    assert not remove_if_abandoned(mine) and mine.is_dir()
    code = run_forked(lambda: owned_directory(tmp_path, "work-"))  # the child exits holding its folder
    assert code == 0
    (orphan,) = (p for p in tmp_path.iterdir() if p != mine)
    assert remove_if_abandoned(orphan) and not orphan.exists()
    os.close(fd)
    assert remove_if_abandoned(mine)


# -- crash points --------------------------------------------------------------------------------------------
def test_crash_points_are_counted_and_named(tmp_path) -> None:
    target = tmp_path / "f"
    assert run_forked(lambda: atomic_write_bytes(target, b"x"), crash_at="replace") == CRASH_EXIT_CODE
    assert not target.exists()
    assert run_forked(lambda: atomic_write_bytes(target, b"x"), crash_at=3) == CRASH_EXIT_CODE  # its last fsync
    assert target.read_bytes() == b"x"
    assert run_forked(lambda: atomic_write_bytes(target, b"y"), crash_at=4) == 0  # only three points


# -- locks ---------------------------------------------------------------------------------------------------
def test_a_second_writer_waits_then_fails_with_a_one_line_error(tmp_path) -> None:
    lock = tmp_path / ".idx.lock"
    with held_elsewhere(file_lock(lock)):
        started = time.monotonic()
        with pytest.raises(LockTimeoutError) as error, file_lock(lock, timeout=0.3, what="index idx"):
            pass
        assert time.monotonic() - started >= 0.3
        message = str(error.value)
        assert isinstance(error.value, EmbedkitError) and "\n" not in message
        assert message.startswith("index idx is locked by another writer (pid ") and "waiting 0.3 s" in message
    with file_lock(lock, timeout=0):  # free again
        pass


def test_a_waiting_writer_gets_the_lock_when_the_holder_releases_it(tmp_path) -> None:
    lock = tmp_path / "l"
    with held_elsewhere(file_lock(lock)) as release:
        threading.Timer(0.2, release.set).start()
        with file_lock(lock, timeout=10):
            assert release.is_set()


def test_the_lock_is_reentrant_in_one_thread(tmp_path) -> None:
    with file_lock(tmp_path / "l", timeout=0), file_lock(tmp_path / "l", timeout=0):
        pass


def test_a_killed_holder_releases_the_lock(tmp_path) -> None:
    lock = tmp_path / "l"
    holder = subprocess.Popen(  # a bare flock, without importing embedkit (fast)
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
                "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"
            ),
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockTimeoutError), file_lock(lock, timeout=0.1):
            pass
    finally:
        holder.kill()
        holder.wait()
    with file_lock(lock, timeout=5):
        pass
