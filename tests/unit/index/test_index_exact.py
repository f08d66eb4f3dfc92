"""Exact torch search: the chunked, streaming top-k equals a numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedkit.errors import ConfigError
from embedkit.index import exact_search
from embedkit.index.exact import TorchBackend, torch_device
from embedkit.index.spec import IndexSpec


def brute_force(queries: np.ndarray, corpus: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if metric == "l2":
        scores = ((queries[:, None, :] - corpus[None, :, :]) ** 2).sum(-1)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    else:
        scores = queries @ corpus.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((37, 16)).astype(np.float32), rng.standard_normal((501, 16)).astype(np.float32)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize(
    ("k", "chunk_size", "query_chunk_size"), [(10, 64, 8), (100, 7, 5), (1, 501, 1024), (20, 1000, 3)]
)
def test_exact_search_equals_brute_force(data, metric, k, chunk_size, query_chunk_size) -> None:
    queries, corpus = data
    scores, indices = exact_search(
        queries, corpus, k, metric=metric, chunk_size=chunk_size, query_chunk_size=query_chunk_size
    )
    expected_scores, expected_indices = brute_force(queries, corpus, k, metric)
    assert scores.dtype == np.float32 and indices.dtype == np.int64 and scores.shape == (37, k)
    np.testing.assert_array_equal(indices, expected_indices)  # k > chunk_size in the second case
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("metric", "pad"), [("ip", -np.inf), ("l2", np.inf)])
def test_k_beyond_the_corpus_is_padded(data, metric, pad) -> None:
    queries, corpus = data
    scores, indices = exact_search(queries[:2], corpus[:5], 8, metric=metric, chunk_size=2)
    assert (indices[:, 5:] == -1).all() and (scores[:, 5:] == pad).all()
    assert sorted(indices[0, :5]) == [0, 1, 2, 3, 4]


def test_bad_k_or_chunk_sizes_are_refused(data) -> None:
    queries, corpus = data
    with pytest.raises(ConfigError, match="k must be"):
        exact_search(queries, corpus, 0)
    with pytest.raises(ConfigError, match="chunk sizes"):
        exact_search(queries, corpus, 3, chunk_size=0)


def test_torch_backend_maps_positions_to_ids_and_removes(data) -> None:
    queries, corpus = data
    backend = TorchBackend.create(IndexSpec("torch"), 16, "ip", "auto")
    ids = np.arange(len(corpus)) * 10 + 3
    backend.add(corpus[:200], ids[:200])
    backend.add(corpus[200:], ids[200:])  # added in two blocks, joined on search
    backend.set_search_params({"chunk_size": 50})
    _, found = backend.search(queries, 5)
    np.testing.assert_array_equal(found, ids[brute_force(queries, corpus, 5, "ip")[1]])
    best = found[0, 0]
    assert backend.remove(np.array([best, 999_999])) == 1 and len(backend) == len(corpus) - 1
    assert best not in backend.search(queries[:1], 5)[1]
    with pytest.raises(ConfigError, match="no parameter nprobe"):
        backend.set_search_params({"nprobe": 4})


def test_torch_device_from_the_spec() -> None:
    assert torch_device(IndexSpec("torch"), "auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="not a torch device"):
        torch_device(IndexSpec("torch", "tpu-ish"), "auto")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no CUDA"):
            torch_device(IndexSpec("torch", "cuda"), "auto")
