"""The faiss backend: every index kind against exact search, metrics, training, removal, search parameters."""

from __future__ import annotations

import warnings

import faiss
import numpy as np
import pytest

from embedkit.errors import ConfigError
from embedkit.index import IndexWarning, exact_search
from embedkit.index.arrays import aligned, normalized
from embedkit.index.faiss_backend import FaissBackend
from embedkit.index.spec import IndexSpec

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

DIM = 32


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """2,000 corpus and 50 query vectors around 20 centres, as real embeddings cluster by topic."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, DIM)).astype(np.float32) * 3
    corpus = centres[rng.integers(0, 20, 2000)] + rng.standard_normal((2000, DIM)).astype(np.float32)
    queries = centres[rng.integers(0, 20, 50)] + rng.standard_normal((50, DIM)).astype(np.float32)
    return queries, corpus


def build(factory: str, corpus: np.ndarray, metric: str = "ip", ids: np.ndarray | None = None) -> FaissBackend:
    backend = FaissBackend.create(IndexSpec("faiss", factory), DIM, metric, "auto")
    if backend.needs_training:
        backend.train(corpus[: backend.training_size(len(corpus))])
    backend.add(corpus, np.arange(len(corpus)) if ids is None else ids)
    return backend


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


@pytest.mark.parametrize(
    ("factory", "params", "minimum", "metric"),
    [
        ("Flat", {}, 1.0, "ip"),
        ("Flat", {}, 1.0, "l2"),
        ("IVF16,Flat", {"nprobe": 16}, 1.0, "ip"),  # probing every list is exact
        ("IVF16,Flat", {"nprobe": 4}, 0.6, "ip"),
        ("IVF16,Flat", {"nprobe": 4}, 0.6, "l2"),
        ("HNSW16", {"efSearch": 64}, 0.9, "ip"),
        ("HNSW16", {"efSearch": 64}, 0.9, "l2"),
        ("IVF16,PQ16x4", {"nprobe": 16}, 0.3, "ip"),  # 64 bits a vector: lossy, far above chance (0.005)
        ("IVF16,PQ16x4", {"nprobe": 16}, 0.3, "l2"),
        ("PQ16x4", {}, 0.3, "ip"),
    ],
)
def test_recall_against_exact_search(clustered, factory, params, minimum, metric) -> None:
    queries, corpus = clustered
    backend = build(factory, corpus, metric)
    if params:
        backend.set_search_params(params)
    scores, found = backend.search(queries, 10)
    exact_scores, exact = exact_search(queries, corpus, 10, metric=metric)
    assert recall(found, exact) >= minimum
    if minimum == 1.0:
        np.testing.assert_allclose(scores, exact_scores, rtol=1e-4, atol=1e-3)


def test_ids_padding_and_l2_distances(clustered) -> None:
    queries, corpus = clustered
    backend = build("Flat", corpus[:3], "l2", ids=np.array([7, 8, 9]))
    scores, found = backend.search(queries[:2], 5)
    assert (found[:, 3:] == -1).all() and (scores[:, 3:] == np.inf).all()
    expected = ((queries[:2, None] - corpus[None, :3]) ** 2).sum(-1)
    np.testing.assert_allclose(np.sort(scores[:, :3], axis=1), np.sort(expected, axis=1), rtol=1e-4)
    assert set(found[0, :3]) == {7, 8, 9}


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW16", "PQ8x4"])
def test_remove_by_id(clustered, factory) -> None:
    queries, corpus = clustered
    backend = build(factory, corpus, ids=np.arange(len(corpus)) + 1000)
    backend.set_search_params({"nprobe": 16} if "IVF" in factory else {})
    _, before = backend.search(queries[:5], 3)
    gone = np.unique(before[:, 0])
    assert backend.remove(gone) == len(gone)  # HNSW cannot remove: the graph is rebuilt without them
    assert len(backend) == len(corpus) - len(gone)
    _, after = backend.search(queries[:5], 3)
    assert not set(gone) & set(after.ravel()) and (after >= 1000).all()


def test_too_little_data_to_train_is_explained(clustered) -> None:
    _, corpus = clustered
    with pytest.raises(ConfigError) as error:
        build("IVF64,Flat", corpus[:50])
    assert str(error.value).count("\n") == 0
    assert "trains 64 IVF lists, so it needs at least 64 documents (2,496 for good clusters" in str(error.value)
    assert "the corpus has 50; use at most n / 39 = 1 lists ('faiss:IVF1,Flat')" in str(error.value)
    with pytest.raises(ConfigError, match=r"the corpus is too small for IVF lists; use 'faiss:HNSW32'"):
        build("IVF64,Flat", corpus[:20])
    with pytest.raises(ConfigError, match=r"256 PQ centroids per sub-quantizer.*the corpus has 100; use fewer bits"):
        build("IVF2,PQ8", corpus[:100])
    with pytest.warns(IndexWarning, match=r"needs at least 64 documents \(2,496 .*corpus has 500.*'faiss:IVF12,Flat'"):
        build("IVF64,Flat", corpus[:500])


def test_training_sample_is_bounded_by_256_per_centroid() -> None:
    backend = FaissBackend.create(IndexSpec("faiss", "IVF4,Flat"), DIM, "ip", "auto")
    assert backend.training_size(100_000) == 256 * 4
    pq = FaissBackend.create(IndexSpec("faiss", "IVF4,PQ8"), DIM, "ip", "auto")
    assert pq.training_size(100_000) == 256 * 256  # the PQ's 256 centroids need more than the 4 lists
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FaissBackend.create(IndexSpec("faiss", "HNSW8"), DIM, "ip", "auto").training_size(10) == 0


def test_bad_factory_strings_and_parameters() -> None:
    with pytest.raises(ConfigError, match="faiss cannot build 'NotAnIndex'"):
        FaissBackend.create(IndexSpec("faiss", "NotAnIndex"), DIM, "ip", "auto")
    flat = FaissBackend.create(IndexSpec("faiss", "Flat"), DIM, "ip", "auto")
    with pytest.raises(ConfigError, match="no search parameter 'nprobe'"):
        flat.set_search_params({"nprobe": 4})
    assert flat.search_params == {}
    if faiss.get_num_gpus() == 0:
        with pytest.raises(ConfigError, match="sees no GPU"):
            FaissBackend.create(IndexSpec("faiss", "Flat"), DIM, "ip", "gpu")


def test_save_and_load_keep_ids_and_parameters(clustered, tmp_path) -> None:
    queries, corpus = clustered
    backend = build("IVF16,Flat", corpus, ids=np.arange(len(corpus)) * 3)
    backend.set_search_params({"nprobe": 8})
    backend.save(tmp_path)
    loaded = FaissBackend.load(tmp_path, IndexSpec("faiss", "IVF16,Flat"), DIM, "ip", "auto")
    loaded.set_search_params({"nprobe": 8})
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], backend.search(queries, 5)[1])
    assert loaded.describe()["nlist"] == 16 and loaded.describe()["faiss_class"] == "IndexIVFFlat"


def test_queries_reach_faiss_aligned_to_64_bytes() -> None:
    buffer = np.zeros(4 * 8 * 4 + 64, dtype=np.uint8)
    offset = (16 - buffer.ctypes.data) % 64  # a float32 [4, 8] array 16 bytes past a cache line
    misaligned = buffer[offset : offset + 128].view(np.float32).reshape(4, 8)
    misaligned[...] = np.arange(32, dtype=np.float32).reshape(4, 8)
    copy = aligned(misaligned)
    assert copy.ctypes.data % 64 == 0 and copy.flags["C_CONTIGUOUS"] and (copy == misaligned).all()
    assert aligned(copy) is copy  # no copy when there is nothing to fix
    unit = normalized(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert unit.dtype == np.float32 and unit.ctypes.data % 64 == 0
    np.testing.assert_allclose(unit, [[0.6, 0.8], [0.0, 0.0]])
