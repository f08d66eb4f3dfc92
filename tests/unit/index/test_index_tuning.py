"""Search parameters tuned at build time for a target recall against exact search."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import TINY_TEXTS

from embedkit.encoders import load_encoder
from embedkit.errors import ConfigError
from embedkit.index import Index, IndexWarning, build_index, exact_search
from embedkit.index.arrays import normalized
from embedkit.index.tuning import GroundTruth, check_target_recall

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

DIM = 32  # the tiny model's dimension
SPECS = {"faiss:IVF64,Flat": "nprobe", "faiss:HNSW8": "efSearch"}


@pytest.fixture(scope="module")
def encoder(tiny_model_path):
    return load_encoder(str(tiny_model_path), precision="fp32")


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """3,000 corpus and 300 held-out query vectors around 40 centres, with clusters that overlap enough that
    faiss's default search parameters miss many neighbours."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)

    def draw(n: int) -> np.ndarray:
        return centres[rng.integers(0, 40, n)] + 1.7 * rng.standard_normal((n, DIM)).astype(np.float32)

    return draw(3000), draw(300)


def build(encoder, corpus: np.ndarray, spec: str, **options) -> Index:
    texts = [f"document {i}" for i in range(len(corpus))]
    return build_index(encoder, texts, spec, embeddings=corpus, show_progress=False, **options)


def held_out_recall(index: Index, corpus: np.ndarray, queries: np.ndarray) -> float:
    """recall@10 of the index's search against exact search, on queries that are not in the corpus."""
    _, expected = exact_search(normalized(queries), normalized(corpus), 10)
    _, found = index.search_internal(queries, 10)
    return float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, expected, strict=True)]))


@pytest.mark.parametrize(("spec", "parameter"), SPECS.items())
def test_tuned_parameters_reach_the_target_that_defaults_miss(encoder, clustered, spec, parameter) -> None:
    corpus, queries = clustered
    default = build(encoder, corpus, spec, target_recall=None)
    tuned = build(encoder, corpus, spec)
    assert default.manifest.search_params == {} and default.manifest.search_tuning is None
    assert held_out_recall(default, corpus, queries) < 0.85

    tuning = tuned.manifest.search_tuning
    assert tuning is not None and tuning["parameter"] == parameter and tuning["reached"]
    assert tuned.manifest.search_params == {parameter: tuning["value"]}
    assert tuned.backend.describe()["search_params"] == {parameter: tuning["value"]}
    assert tuning["recall"] >= 0.95 and tuning["target_recall"] == 0.95
    assert tuning["queries"] == 300 and tuning["documents"] == len(corpus) == len(tuned) and tuning["k"] == 10
    # the smallest value that reaches the target: every smaller value tried fell short of it
    assert tuning["tried"][-1] == [tuning["value"], tuning["recall"]]
    assert all(recall < 0.95 for _, recall in tuning["tried"][:-1]) and len(tuning["tried"]) > 1
    assert held_out_recall(tuned, corpus, queries) >= 0.94  # on queries from outside the corpus too


def test_a_lower_target_picks_a_smaller_value(encoder, clustered) -> None:
    corpus, _ = clustered
    high = build(encoder, corpus, "faiss:IVF64,Flat", target_recall=0.99).manifest.search_tuning
    low = build(encoder, corpus, "faiss:IVF64,Flat", target_recall=0.8).manifest.search_tuning
    assert high is not None and low is not None and low["value"] < high["value"]
    assert low["recall"] >= 0.8 and high["recall"] >= 0.99


def test_an_unreachable_target_warns_and_keeps_the_best(encoder, clustered) -> None:
    corpus, _ = clustered
    with pytest.warns(IndexWarning, match=r"faiss:IVF16,PQ4x2 reaches recall@10 0\.\d+ at best .* short of the target"):
        index = build(encoder, corpus, "faiss:IVF16,PQ4x2")
    tuning = index.manifest.search_tuning
    assert tuning is not None and not tuning["reached"]
    assert [value for value, _ in tuning["tried"]] == [1, 2, 4, 8, 16]  # every value, up to all 16 lists
    best = max(recall for _, recall in tuning["tried"])
    assert tuning["recall"] == best and tuning["value"] == min(v for v, r in tuning["tried"] if r == best)
    assert index.manifest.search_params == {"nprobe": tuning["value"]}


@pytest.mark.parametrize("spec", ["torch", "faiss:Flat", "faiss:PQ4x4"])
def test_indexes_without_a_search_parameter_are_not_tuned(encoder, clustered, spec) -> None:
    corpus, _ = clustered
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = build(encoder, corpus[:1000], spec)
    assert index.manifest.search_tuning is None and index.manifest.search_params == {}


def test_the_held_out_queries_are_added_after_tuning(encoder, clustered) -> None:
    corpus, _ = clustered
    index = build(encoder, corpus, "faiss:IVF64,Flat")
    index.set_search_params(nprobe=64)  # every list: exact
    _, found = index.search(corpus, 1)
    np.testing.assert_array_equal(found[:, 0], np.arange(len(corpus)))  # each document, the tuning queries too


def test_tuning_is_saved_loaded_and_used(encoder, clustered, tmp_path) -> None:
    corpus, queries = clustered
    index = build(encoder, corpus, "faiss:IVF64,Flat")
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx", encoder=encoder)
    assert loaded.manifest.search_tuning == index.manifest.search_tuning
    assert loaded.info()["search_tuning"] == index.manifest.search_tuning
    assert loaded.backend.describe()["search_params"] == index.manifest.search_params
    np.testing.assert_array_equal(loaded.search(queries, 10).ids, index.search(queries, 10).ids)


def test_set_search_params_overrides_the_tuned_value(encoder, clustered, tmp_path) -> None:
    corpus, queries = clustered
    index = build(encoder, corpus, "faiss:IVF64,Flat")
    tuning = index.manifest.search_tuning
    assert tuning is not None and tuning["value"] > 1
    index.set_search_params(nprobe=1)
    assert held_out_recall(index, corpus, queries) < 0.85
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx", encoder=encoder)
    assert loaded.manifest.search_params == {"nprobe": 1}
    assert loaded.manifest.search_tuning == tuning  # what was measured stays on record


def test_add_keeps_the_tuned_parameters(encoder, clustered) -> None:
    corpus, _ = clustered
    index = build(encoder, corpus[:2000], "faiss:IVF32,Flat")
    tuning = index.manifest.search_tuning
    index.add([(2000 + i, f"more {i}") for i in range(1000)], embeddings=corpus[2000:])
    assert index.manifest.search_tuning == tuning and tuning is not None and tuning["documents"] == 2000
    assert index.manifest.search_params == {"nprobe": tuning["value"]}


def test_embedded_corpus_is_tuned_without_embedding_twice(encoder) -> None:
    """Without precomputed embeddings the tuning queries are embedded with the training sample, once."""
    words = " ".join(TINY_TEXTS).split()  # the tiny model's vocabulary: other words would all be [UNK]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 6)) for _ in range(120)]
    calls: list[int] = []
    original = encoder.encode

    def counting(batch, **options):
        calls.append(len(batch))
        return original(batch, **options)

    encoder.encode = counting
    try:
        index = build_index(encoder, texts, "faiss:HNSW8", show_progress=False)
    finally:
        del encoder.encode
    assert sum(calls) == len(texts)
    tuning = index.manifest.search_tuning
    assert tuning is not None and tuning["queries"] == 12 and tuning["documents"] == len(index) == len(texts)
    assert tuning["reached"]


def test_ground_truth_over_chunks_is_exact_search(clustered) -> None:
    corpus, queries = clustered
    for metric in ("ip", "l2"):
        truth = GroundTruth(queries[:20], 10, metric)
        for start in range(0, len(corpus), 700):  # chunks of 700, the last of 200
            truth.add(corpus[start : start + 700], np.arange(start, min(start + 700, len(corpus))) + 5)
        scores, ids = truth.result()
        expected_scores, expected = exact_search(queries[:20], corpus, 10, metric=metric)
        np.testing.assert_array_equal(ids, expected + 5)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", [0, 1.5, -0.2, float("nan"), True, "0.9"])
def test_bad_target_recall_is_a_one_line_error(encoder, clustered, target) -> None:
    corpus, _ = clustered
    with pytest.raises(ConfigError, match=r"the target recall must be a number in \(0, 1\]") as error:
        build(encoder, corpus[:100], "faiss:HNSW8", target_recall=target)
    assert "\n" not in str(error.value)
    assert check_target_recall(None) is None and check_target_recall(np.float32(0.5)) == 0.5
