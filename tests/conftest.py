"""Fixtures and helpers shared by every test directory."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real datasets: ``$EMBEDKIT_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    folder = Path(os.environ.get("EMBEDKIT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not folder.is_dir():
        pytest.fail(
            f"shared data folder {folder} not found; set EMBEDKIT_SHARED_DATA to the folder holding MANIFEST.md"
        )
    return folder


TINY_TEXTS = [
    "the cat sat on the mat",
    "a dog runs in the park",
    "the sun rises in the east",
    "rain falls on the green hills",
    "she plays the piano every evening",
    "he reads a book about old ships",
    "the train leaves at noon",
    "children build a castle of sand",
]


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random sentence-transformers model (2 layers, hidden size 32) built from a config, no download."""
    from embedkit.encoders import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", TINY_TEXTS, seed=0)


PROMPTS = {"query": "query: ", "document": "passage: "}


@pytest.fixture(scope="session")
def prompted_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model of :func:`tiny_model_path` with named prompts: :data:`PROMPTS` (E5's)."""
    from embedkit.encoders import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("prompted") / "model", TINY_TEXTS, seed=0, prompts=PROMPTS)


FIT_SENTENCES = [
    "the cat sat on the mat", "a dog runs in the park", "the sun rises in the east",
    "rain falls on the green hills", "she plays the piano every evening", "he reads a book about old ships",
    "the train leaves at noon", "children build a castle of sand", "the cat runs", "a dog sat on the hills",
]


def sentence_examples():
    """Ten training sentences of the tiny model's vocabulary (two of them sharing most words), kind sentences."""
    from embedkit.data import Examples
    from embedkit.types import Example, Kind

    return Examples([Example(anchor=s, positive=s) for s in FIT_SENTENCES], Kind.SENTENCES)


@contextlib.contextmanager
def writer_lock_held_elsewhere(index_path):
    """The index's writer lock held by another thread for the duration of the block."""
    from embedkit.index.folder import writer_lock

    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with writer_lock(index_path):
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(10), "the other thread never took the lock"
        yield
    finally:
        release.set()
        holder.join()
