"""Index folders on disk: numbered versions behind a pointer file, one writer at a time, readers never blocked.

::

    idx/CURRENT        "v-000012": the version that readers open
    idx/v-000012/      manifest.json, payloads.sqlite, and index.faiss or vectors.safetensors
    .idx.lock          beside the folder: the writers' lock file (it stays)

**Why versions behind a pointer.** A folder cannot be renamed over a non-empty folder, so replacing a whole
index folder takes two renames, and a crash between them leaves nothing at the path (the defect this layout
replaced). Even an atomic exchange of two folders (Linux's ``renameat2``) leaves a reader that opens the files one
by one free to read the manifest of one version and the vectors of the next. Here a save writes a new version
folder that no reader looks at yet, fsyncs it, and then moves the pointer with one ``os.replace`` of a small
file: before that instant every reader opens the old version, after it the new one. There is no instant without
a complete index at the path, and no reader mixes two versions. Recovering a stepped-aside folder on open was
the alternative; it needs a writer's lock in every reader, and still lets a reader see a half-swapped folder.

**Writers** hold :func:`writer_lock` (``fcntl.flock`` on ``.NAME.lock``) for the whole load-modify-save
(:meth:`Index.update <embedkit.index.Index.update>`, the command line's ``add``, ``remove`` and ``build``), so
no update is lost; a second writer waits up to a timeout. A save also checks that the folder still holds the
version the index was loaded from, so that a load, change and save without the lock fails loudly
(:class:`~embedkit.index.spec.IndexConflictError`) rather than dropping another writer's change.

**Readers** take no writer lock. While loading they hold a shared ``flock`` on the version folder; a writer
removes an old version only when it can lock it exclusively, so a version never disappears under a reader that
is loading it. A loaded index needs its folder no more: its vectors are in memory, and SQLite keeps its file
open (POSIX keeps the data of an open file that was removed), so a reader that opened version N keeps reading N.

**Crash leftovers** (a half-written version, a pointer's temporary file, a version that a reader held when it
was replaced) are removed by the next writer, under the lock. Every step is fsynced: the version's files and
folder before the pointer moves, the pointer file before its rename, and the index folder after it.

**The old layout**, files at the root of the folder (embedkit 0.1), is read as before. The first save into
such a folder writes ``v-000001`` and the pointer beside the old files, and removes the old files once no reader
holds the folder. Hidden ``.idx.tmp-*``/``.idx.old-*`` folders that a crashed save of the old layout left are
repaired by :func:`embedkit.fsutil.recover_directory` (the old version comes back when ``idx`` is missing).

Locks are POSIX ``flock`` locks, so this needs a POSIX system and a filesystem that honours them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from embedkit.errors import ConfigError
from embedkit.fsutil import (
    atomic_write_bytes,
    crash_point,
    file_lock,
    fsync_directory,
    fsync_tree,
    lock_existing,
    recover_directory,
    remove_path,
)
from embedkit.index.spec import IndexConflictError, IndexFileError
from embedkit.index.store import MANIFEST_FILE, Manifest, read_manifest

POINTER_FILE = "CURRENT"
LEGACY = "."
"""The version name of a folder of the old layout: the folder itself is the version."""
DEFAULT_LOCK_TIMEOUT = 600.0
"""Seconds a writer waits for another writer of the same index: long enough for a usual add to finish."""
READ_ATTEMPTS = 100  # each retry means a writer replaced the version between reading the pointer and locking it
_VERSION = re.compile(r"v-(\d{6,})")
_DELETING = ".deleting-"  # a version renamed out of the readers' way before it is removed


def lock_file(root: Path) -> Path:
    """``.NAME.lock`` beside the index folder ``root`` (not inside: a first save has no folder to hold it)."""
    return root.parent / f".{root.name}.lock"


def writer_lock(
    root: str | os.PathLike[str], timeout: float | None = DEFAULT_LOCK_TIMEOUT
) -> contextlib.AbstractContextManager[None]:
    """The writers' lock of the index folder ``root``; see :func:`embedkit.fsutil.file_lock`.

    Raises:
        LockTimeoutError: another writer held it for ``timeout`` seconds.
    """
    root = Path(root)
    return file_lock(lock_file(root), timeout, what=f"index {root}")


# -- which version is current --------------------------------------------------------------------------------
def read_pointer(root: Path) -> str | None:
    """The version the pointer names, or ``None`` when there is no pointer.

    Raises:
        IndexFileError: a pointer that does not name a version.
    """
    try:
        name = (root / POINTER_FILE).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise IndexFileError(f"{root / POINTER_FILE}: cannot read the version pointer ({error})") from None
    if not _VERSION.fullmatch(name):
        raise IndexFileError(f"{root / POINTER_FILE}: names {name[:40]!r}, not a version such as v-000001")
    return name


def current_version(root: Path) -> str | None:
    """The current version of ``root``: the pointer's, :data:`LEGACY` for the old layout, ``None`` if neither."""
    pointer = read_pointer(root)
    if pointer is not None:
        return pointer
    return LEGACY if (root / MANIFEST_FILE).is_file() else None


def version_folder(root: Path, version: str) -> Path:
    """The folder that holds the files of ``version``."""
    return root if version == LEGACY else root / version


def current_folder(root: str | os.PathLike[str]) -> Path:
    """The folder of the current version of the index at ``root`` (for inspection; to read it, use :func:`reading`).

    Raises:
        IndexFileError: not an index folder.
    """
    root = Path(root)
    version = current_version(root)
    if version is None:
        raise _not_an_index(root)
    return version_folder(root, version)


def _not_an_index(root: Path) -> IndexFileError:
    if not root.is_dir():
        return IndexFileError(f"{root}: no such index folder")
    return IndexFileError(f"{root}: not an index folder (no {POINTER_FILE} or {MANIFEST_FILE})")


# -- reading -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def reading(root: str | os.PathLike[str]) -> Iterator[tuple[Path, str]]:
    """``(folder, version)`` of the current version of ``root``, which no writer removes until the block ends.

    Raises:
        IndexFileError: not an index folder, or one that kept changing while it was being opened.
    """
    root = Path(root)
    if not root.exists():
        _recover_stepped_aside(root)
    for _ in range(READ_ATTEMPTS):
        version = current_version(root)
        if version is None:
            raise _not_an_index(root)
        fd = _hold(root, version)
        if fd is None:
            if current_version(root) == version:  # not replaced: gone
                raise IndexFileError(f"{version_folder(root, version)}: missing, though {POINTER_FILE} names it")
            continue  # a writer replaced it after the pointer was read: read the pointer again
        try:
            yield version_folder(root, version), version
        finally:
            os.close(fd)
        return
    raise IndexFileError(f"{root}: the index changed {READ_ATTEMPTS} times while it was being opened; try again")


def current_manifest(root: str | os.PathLike[str]) -> Manifest:
    """The checked manifest of the current version of the index at ``root``.

    Raises:
        IndexFileError: not an index folder, or a manifest or file that fails its checks.
    """
    with reading(root) as (folder, _):
        return read_manifest(folder)


def _hold(root: Path, version: str) -> int | None:
    """A descriptor holding a shared lock on the folder of ``version``, or ``None`` when a writer removed it, or
    (old layout) converted the folder to the new layout, before the lock was taken."""
    fd = lock_existing(version_folder(root, version), shared=True)
    if fd is not None and version == LEGACY and read_pointer(root) is not None:
        os.close(fd)
        return None
    return fd


def _recover_stepped_aside(root: Path) -> None:
    """Put back an old-layout index that a save of embedkit 0.1 stepped aside and then crashed (under the
    writers' lock, as it renames)."""
    if root.parent.is_dir() and any(p.name.startswith(f".{root.name}.old-") for p in root.parent.iterdir()):
        with writer_lock(root):
            recover_directory(root)


# -- writing -------------------------------------------------------------------------------------------------
def check_replaceable(root: Path) -> None:
    """Refuse to save over something that is not an index folder, so that a typo never replaces a user's folder.

    Raises:
        ConfigError: ``root`` is a file, or a folder with other things in it.
    """
    if not root.exists():
        return
    if not root.is_dir() or (current_version(root) is None and not all(_is_ours(e.name) for e in root.iterdir())):
        raise ConfigError(f"refusing to replace {root}: it exists and is not an embedkit index folder")


def _is_ours(name: str) -> bool:
    """Whether a name inside an index folder is one this layout writes (a first save that crashed left them)."""
    return bool(_VERSION.fullmatch(name)) or name.startswith((_DELETING, f".{POINTER_FILE}.tmp-"))


def check_unchanged(root: Path, version: str) -> None:
    """Refuse to save an index loaded as ``version`` when another writer has replaced that version since.

    Raises:
        IndexConflictError: names both versions.
    """
    current = current_version(root)
    if current is not None and current != version:
        raise IndexConflictError(
            f"{root}: another writer saved this index after it was loaded (it now holds version {current}, it was "
            f"loaded as {version}); saving would drop that change. Load it again and repeat the change, or use "
            "Index.update(), which holds the writers' lock from load to save"
        )


def commit(root: Path, write: Callable[[Path], None]) -> str:
    """Write a new version of ``root`` with ``write(folder)`` and make it current; returns its name.

    Call it under :func:`writer_lock`. An exception in ``write`` removes the new version and leaves the current
    one as it was.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(root)  # the old layout's leftovers beside the folder
    _make_root(root)
    remove_leftovers(root)
    version = _next_version(root)
    folder = root / version
    folder.mkdir()
    try:
        write(folder)
        fsync_tree(folder)
        fsync_directory(root)
    except BaseException:
        remove_path(folder)
        raise
    atomic_write_bytes(root / POINTER_FILE, f"{version}\n".encode())
    remove_leftovers(root)
    return version


def _make_root(root: Path) -> None:
    """Create the index folder (with the umask's mode) and make its name durable."""
    if root.is_dir():
        return
    root.mkdir(parents=True)
    fsync_directory(root.parent)


def _next_version(root: Path) -> str:
    """One past the highest version number in ``root``: names are never reused, so a reader that locks a
    version by name always gets the version it read in the pointer."""
    numbers = [int(m.group(1)) for entry in root.iterdir() if (m := _VERSION.fullmatch(entry.name))]
    return f"v-{max(numbers, default=0) + 1:06d}"


def remove_leftovers(root: Path) -> None:
    """Remove what is not the current version (under the writers' lock): versions that no reader holds, a crashed
    writer's half-written version or pointer file, and the old layout's files once the pointer replaced them."""
    current = read_pointer(root)
    for entry in root.iterdir():
        if entry.name.startswith((_DELETING, f".{POINTER_FILE}.tmp-")):
            remove_path(entry)
        elif _VERSION.fullmatch(entry.name) and entry.name != current:
            _remove_version(entry)
    if current is not None and (root / MANIFEST_FILE).exists():
        _remove_legacy_files(root)


def _remove_version(folder: Path) -> None:
    """Remove a version folder unless a reader holds it; it is first renamed, so that no reader starts on a
    folder that is half removed (a reader that locked it meanwhile finds the name gone and reads the pointer
    again)."""
    fd = lock_existing(folder, wait=False)
    if fd is None:
        return
    try:
        doomed = folder.parent / f"{_DELETING}{folder.name}"
        crash_point("rename")
        os.replace(folder, doomed)
        remove_path(doomed)
    finally:
        os.close(fd)


def _remove_legacy_files(root: Path) -> None:
    """Remove the old layout's files from ``root`` unless a reader holds the folder; the manifest goes last, so
    that whatever a crash leaves behind is still listed in it."""
    fd = lock_existing(root, wait=False)
    if fd is None:
        return
    try:
        crash_point("remove")
        for name in _legacy_files(root):
            remove_path(root / name)
        remove_path(root / MANIFEST_FILE)
        fsync_directory(root)
    finally:
        os.close(fd)


def _legacy_files(root: Path) -> list[str]:
    """The files that the old layout's manifest lists (plain names only: nothing outside ``root``)."""
    try:
        files = json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in files if isinstance(name, str) and name == Path(name).name and name != POINTER_FILE]
