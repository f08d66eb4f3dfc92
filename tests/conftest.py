"""Fixtures and helpers shared by every test directory."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
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


@pytest.fixture(autouse=True, scope="session")
def torch_backend_and_own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Models encode in torch unless a test names another backend or unsets ``EMBEDKIT_BACKEND``: the default
    (``auto``) would convert every tiny model a test trains to OpenVINO, seconds each; the OpenVINO tests check
    that backend against torch and what ``auto`` chooses. embedkit's cache goes to the session's temporary folder,
    not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDKIT_BACKEND", "torch")
        patch.setenv("EMBEDKIT_CACHE", str(tmp_path_factory.mktemp("embedkit-cache")))
        yield


@pytest.fixture
def one_faiss_thread() -> Iterator[None]:
    """faiss on one thread for the test (``pytestmark = pytest.mark.usefixtures("one_faiss_thread")``): tiny
    indexes gain nothing from threads, and OpenMP waits badly on a busy 2-core machine."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


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
def held_elsewhere(lock: contextlib.AbstractContextManager[object]) -> Iterator[threading.Event]:
    """``lock`` held by another thread until the block ends or the yielded event is set."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(10), "the other thread never took the lock"
        yield release
    finally:
        release.set()
        holder.join()


def write_beir(folder: Path, corpus, queries, qrels, splits: Sequence[str] = ("test",)) -> Path:
    """A BEIR folder: ``corpus`` {id: (title, text)}, ``queries`` {id: text}, ``qrels`` [(query, doc, score)]
    written as the qrels of each of ``splits``; returns ``folder``."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": i, "title": title, "text": text}) + "\n" for i, (title, text) in corpus.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries.items()))
    for split in splits:
        (folder / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    return folder