"""Index folders under concurrency and crashes: writers killed at every step of a save, writers that race, and
readers that search throughout (embedkit.index.folder).

The processes come from a fork server that imported embedkit once, so that each of the dozens of writers here
starts in milliseconds rather than re-importing torch. A writer is killed for real: ``EMBEDKIT_CRASH_AT`` makes
it call ``os._exit`` at that rename or fsync of its save, leaving whatever it had written on disk.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from multiprocessing.context import ForkServerContext
from pathlib import Path

import numpy as np
import pytest

from embedkit.encoders import load_encoder
from embedkit.fsutil import CRASH_ENV, CRASH_EXIT_CODE
from embedkit.index import Index, build_index
from embedkit.index.folder import POINTER_FILE, current_folder, read_pointer, remove_leftovers, writer_lock
from embedkit.index.store import MANIFEST_FILE

DIM = 32  # the tiny model's
DOCS = [(f"d{i}", f"document {i}") for i in range(6)]


@pytest.fixture(scope="module")
def encoder(tiny_model_path):
    return load_encoder(tiny_model_path, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def processes() -> ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    # the modules behind this file's imports (embedkit's packages import their modules on first use)
    context.set_forkserver_preload(["embedkit.index.index", "embedkit.encoders.sentence_transformer"])
    return context


def run(context: ForkServerContext, target: Callable[..., None], *args: object, timeout: float = 300) -> int:
    """Run ``target(*args)`` in a new process; its exit code."""
    process = context.Process(target=target, args=args)
    process.start()
    process.join(timeout)
    assert process.exitcode is not None, f"{target.__name__} did not finish in {timeout} s"
    return process.exitcode


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def ids_of(index: Index) -> set[str]:
    externals, _ = index.store.id_arrays()
    return {e for e in externals.tolist() if e is not None}


def build(encoder, root: Path, spec: str = "faiss:Flat") -> set[str]:
    build_index(encoder, DOCS, spec=spec, embeddings=vectors(len(DOCS), 0)).save(root)
    return {doc_id for doc_id, _ in DOCS}


def check_searchable(root: Path) -> set[str]:
    """Load the index at ``root``, search it, and check that each hit's text belongs to its id (vectors and
    payloads of one version); its ids."""
    index = Index.load(root)
    result = index.search(vectors(2, 99), k=len(index), return_payloads=True)
    for doc_id, text in zip(result.ids.ravel(), result.texts.ravel(), strict=True):
        assert doc_id is None or text == text_of(doc_id)
    return ids_of(index)


def text_of(doc_id: str) -> str:
    return f"document {doc_id[1:]}" if doc_id in {d for d, _ in DOCS} else f"text of {doc_id}"


# -- processes (module-level, so that the fork server's children can find them) ------------------------------
def add_and_crash(root: str, ids: list[str], crash_at: int, temp: str) -> None:
    """Add ``ids`` under the writers' lock, dying at crash point ``crash_at`` of the process."""
    os.environ[CRASH_ENV] = str(crash_at)
    tempfile.tempdir = temp
    with Index.update(root) as index:
        index.add([(i, text_of(i)) for i in ids], embeddings=vectors(len(ids), crash_at))


def write_rounds(root: str, tag: str, rounds: int, temp: str, out: str) -> None:
    """``rounds`` adds of 3 documents, each a whole load-modify-save, and a remove after every third; writes the
    ids it leaves in the index to ``out``."""
    tempfile.tempdir = temp
    kept: list[str] = []
    for number in range(rounds):
        ids = [f"{tag}{number}-{j}" for j in range(3)]
        with Index.update(root, lock_timeout=120) as index:
            index.add([(i, text_of(i)) for i in ids], embeddings=vectors(3, number))
        kept.extend(ids)
        if number % 3 == 2:
            with Index.update(root, lock_timeout=120) as index:
                index.remove([kept.pop(0)])
    Path(out).write_text(json.dumps(kept))


def read_until(root: str, stop: str, out: str) -> None:
    """Load and search the index until ``stop`` exists; writes the number of reads and every error to ``out``."""
    reads, errors = 0, []
    while not Path(stop).exists():
        try:
            check_searchable(Path(root))
            reads += 1
        except Exception as error:  # noqa: BLE001  (every error counts, whatever its kind)
            errors.append(f"{type(error).__name__}: {error}")
    Path(out).write_text(json.dumps({"reads": reads, "errors": errors}))


# -- tests ---------------------------------------------------------------------------------------------------
def crash_every_point(context: ForkServerContext, root: Path, temp: Path, reset: Callable[[], set[str]]) -> int:
    """Kill an add at crash point 1, 2, ... until one completes, each time from the state ``reset()`` makes (it
    returns the ids the index holds), checking that the killed writer left the old index or the whole new one,
    searchable; returns the point at which the add completed."""
    point = 1
    while True:
        present = reset()
        ids = [f"k{point}-{j}" for j in range(2)]
        code = run(context, add_and_crash, str(root), ids, point, str(temp))
        assert code in (0, CRASH_EXIT_CODE), f"the writer failed at point {point} (exit code {code})"
        found = check_searchable(root)
        assert found in (present, present | set(ids)), f"killed at point {point}: neither the old nor the new index"
        if code == 0:
            return point
        point += 1


@pytest.mark.parametrize("spec", ["torch", "faiss:Flat"])
def test_a_writer_killed_at_any_step_of_a_save_leaves_a_complete_index(encoder, processes, tmp_path, spec) -> None:
    root, temp = tmp_path / "idx", tmp_path / "temp"
    temp.mkdir()
    build(encoder, root, spec)

    def tidy() -> set[str]:  # so that every run crosses the same points: none spent on a crashed run's leftovers
        with writer_lock(root):
            remove_leftovers(root)
        return check_searchable(root)

    # fsync of 3 files, of the version folder and of the index folder; the pointer's fsync, rename and folder
    # fsync; the rename of the replaced version before its removal
    assert crash_every_point(processes, root, temp, tidy) == 10


def test_the_next_writer_removes_what_killed_writers_left(encoder, processes, tmp_path) -> None:
    root, temp = tmp_path / "idx", tmp_path / "temp"
    temp.mkdir()
    build(encoder, root)
    for point in (3, 6, 8):  # a half-written version, a pointer's temporary file, a replaced version
        assert run(processes, add_and_crash, str(root), [f"k{point}"], point, str(temp)) == CRASH_EXIT_CODE
    assert len(os.listdir(root)) > 2
    assert len(os.listdir(temp)) == 1  # each writer removed the working copy of the one killed before it
    assert run(processes, add_and_crash, str(root), ["last"], 10**6, str(temp)) == 0
    assert sorted(os.listdir(root)) == [POINTER_FILE, read_pointer(root)]
    assert os.listdir(temp) == []  # the killed writer's working copy, and the last writer's own, are gone


def make_legacy(source: Path, root: Path) -> None:
    """An index folder of the old layout (embedkit 0.1): files at the root, a version 1 manifest (no checksum)."""
    folder = current_folder(source)
    root.mkdir()
    for path in folder.iterdir():
        (root / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    del manifest["checksum"]
    (root / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 1}))


def test_converting_an_old_layout_folder_survives_a_crash_at_any_step(encoder, processes, tmp_path) -> None:
    present = build(encoder, tmp_path / "new")
    root, temp = tmp_path / "idx", tmp_path / "temp"
    temp.mkdir()

    def fresh_legacy() -> set[str]:
        shutil.rmtree(root, ignore_errors=True)
        make_legacy(tmp_path / "new", root)
        return present

    fresh_legacy()
    assert check_searchable(root) == present and Index.load(root).version == "."
    # 8 points up to the pointer's folder fsync (as above), then removing the old files and an fsync
    assert crash_every_point(processes, root, temp, fresh_legacy) == 11
    assert sorted(os.listdir(root)) == [POINTER_FILE, read_pointer(root)]  # the old layout's files are gone


def test_concurrent_writers_lose_nothing_and_readers_see_no_error(encoder, processes, tmp_path) -> None:
    root, temp = tmp_path / "idx", tmp_path / "temp"
    temp.mkdir()
    present = build(encoder, root)
    stop, read_out = tmp_path / "stop", tmp_path / "reads.json"
    reader = processes.Process(target=read_until, args=(str(root), str(stop), str(read_out)))
    reader.start()
    writers = [
        processes.Process(target=write_rounds, args=(str(root), tag, 6, str(temp), str(tmp_path / f"{tag}.json")))
        for tag in ("a", "b")
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(300)
        assert writer.exitcode == 0
    time.sleep(0.5)  # a few more reads of the final version
    stop.touch()
    reader.join(60)
    assert reader.exitcode == 0
    kept = {doc_id for tag in ("a", "b") for doc_id in json.loads((tmp_path / f"{tag}.json").read_text())}
    assert len(kept) == 2 * (6 * 3 - 2)
    assert check_searchable(root) == present | kept  # no writer lost another's documents
    reads = json.loads(read_out.read_text())
    assert reads["errors"] == [] and reads["reads"] > 0
