"""The ``hybrid`` index: the fusion of what its dense and BM25 sides find, saved, loaded, updated, specs checked."""

from __future__ import annotations

import numpy as np
import pytest

from embedkit.errors import ConfigError, EmbedkitError
from embedkit.index import Index, IndexFileError, build_index, convex_fusion, reciprocal_rank_fusion
from embedkit.index.folder import current_folder
from embedkit.index.store import MANIFEST_FILE, Manifest

pytest.importorskip("bm25s")
pytest.importorskip("Stemmer")

WORDS = [
    "cat", "dog", "sun", "rain", "piano", "book", "train", "castle", "mat", "park", "east", "hills", "evening",
    "ships", "noon", "sand", "sat", "runs", "rises", "falls", "plays", "reads", "leaves", "build", "the", "a",
    "on", "in", "of",
]


@pytest.fixture(scope="module")
def encoder(tiny_model_path):
    from embedkit.encoders import load_encoder

    return load_encoder(tiny_model_path)


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(1)
    documents = [" ".join(rng.choice(WORDS, size=rng.integers(4, 10))) for _ in range(120)]
    queries = [" ".join(rng.choice(WORDS, size=3)) for _ in range(12)]
    return documents, queries


def sides(encoder, documents, queries, dense_spec, depth):
    """What the dense and the BM25 side find on their own: ``(scores, ids)`` each, ``depth`` deep."""
    dense = build_index(encoder, documents, spec=dense_spec).search_internal(queries, depth)
    lexical = build_index(None, documents, spec="bm25").search_internal(queries, depth)
    return dense, lexical


@pytest.mark.parametrize(
    ("spec", "fuse"),
    [
        ("hybrid:torch", lambda d, l, k: reciprocal_rank_fusion([d[1], l[1]], k)),
        ("hybrid:rrf_k=5,depth=30:faiss:Flat", lambda d, l, k: reciprocal_rank_fusion([d[1], l[1]], k, rrf_k=5)),
        (
            "hybrid:fusion=convex,alpha=0.3:faiss:Flat",
            lambda d, l, k: convex_fusion([d[0], l[0]], [d[1], l[1]], [0.3, 0.7], k),
        ),
        (
            "hybrid:fusion=convex,norm=zscore,depth=30:torch",
            lambda d, l, k: convex_fusion([d[0], l[0]], [d[1], l[1]], [0.5, 0.5], k, normalization="zscore"),
        ),
    ],
)
def test_hybrid_search_fuses_what_each_side_finds(encoder, corpus, spec, fuse) -> None:
    documents, queries = corpus
    depth = 30 if "depth=30" in spec else 100
    dense_spec = "torch" if spec.endswith("torch") else "faiss:Flat"
    dense, lexical = sides(encoder, documents, queries, dense_spec, depth)
    expected_scores, expected_ids = fuse(dense, lexical, 10)
    scores, found = build_index(encoder, documents, spec=spec).search(queries, k=10)
    np.testing.assert_array_equal(found, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)


def test_round_trip_and_updates_touch_both_sides(encoder, corpus, tmp_path) -> None:
    documents, queries = corpus
    rows = [(f"d{i}", text) for i, text in enumerate(documents)]
    index = build_index(encoder, rows[:100], spec="hybrid:fusion=convex,alpha=0.6:faiss:Flat")
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx", encoder=encoder)
    before, after = index.search(queries, k=10), loaded.search(queries, k=10)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.scores, before.scores)
    info = loaded.info()
    assert info["spec"] == "hybrid:fusion=convex,alpha=0.6:faiss:Flat" and info["backend"]["alpha"] == 0.6
    assert {"index.faiss", "bm25.ids.safetensors", "bm25.vocab.index.json"} <= set(info["files"])

    with Index.update(tmp_path / "idx", encoder) as changing:
        changing.add(rows[100:])
        changing.remove([f"d{i}" for i in range(0, 120, 2)])
    kept = [row for row in rows if int(row[0][1:]) % 2]
    updated = Index.load(tmp_path / "idx", encoder=encoder)
    fresh = build_index(encoder, kept, spec="hybrid:fusion=convex,alpha=0.6:faiss:Flat")
    assert len(updated) == 60 and updated.info()["backend"]["lexical"]["ntotal"] == 60
    result, expected = updated.search(queries, k=10), fresh.search(queries, k=10)
    np.testing.assert_array_equal(result.ids, expected.ids)
    np.testing.assert_allclose(result.scores, expected.scores, rtol=1e-5)


def test_search_parameters_go_to_the_dense_side(encoder, corpus, tmp_path) -> None:
    index = build_index(encoder, corpus[0], spec="hybrid:faiss:IVF2,Flat")
    index.set_search_params(nprobe=2)
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx", encoder=encoder)
    assert loaded.info()["backend"]["dense"]["search_params"] == {"nprobe": 2}
    np.testing.assert_array_equal(loaded.search(corpus[1], k=5).ids, index.search(corpus[1], k=5).ids)


def test_vectors_alone_are_refused_and_given_embeddings_are_used(encoder, corpus) -> None:
    documents, queries = corpus
    index = build_index(encoder, documents, spec="hybrid:torch")
    with pytest.raises(ConfigError, match="searches texts: give the query texts, not vectors"):
        index.search(np.zeros((1, encoder.dim), dtype=np.float32))
    vectors = encoder.encode(queries, normalize=True)
    np.testing.assert_array_equal(
        index.search_internal(queries, 5, embeddings=vectors)[1], index.search_internal(queries, 5)[1]
    )


@pytest.mark.parametrize(
    ("spec", "metric", "message"),
    [
        ("hybrid", "cosine", "names no dense index to fuse with BM25; e.g. hybrid:faiss:Flat"),
        ("hybrid:fusion=convex", "cosine", "names no dense index"),
        ("hybrid:bm25", "cosine", "the dense part must embed"),
        ("hybrid:hybrid:torch", "cosine", "the dense part must embed"),
        ("hybrid:fusion=max:torch", "cosine", "unknown fusion 'max'; valid: rrf, convex"),
        ("hybrid:alpha=0.3:torch", "cosine", "option alpha does not apply to fusion=rrf"),
        ("hybrid:fusion=convex,rrf_k=10:torch", "cosine", "option rrf_k does not apply to fusion=convex"),
        ("hybrid:fusion=convex,alpha=1.5:torch", "cosine", r"option alpha must be a number in \[0, 1\]"),
        ("hybrid:fusion=convex,norm=l1:torch", "cosine", "unknown norm 'l1'; valid: minmax, zscore"),
        ("hybrid:depth=0:faiss:Flat", "cosine", "option depth must be an integer >= 1, got '0'"),
        ("hybrid:depth=2.5:faiss:Flat", "cosine", "option depth must be an integer"),
        ("hybrid:weight=1:torch", "cosine", "unknown option 'weight'; valid: fusion, rrf_k, alpha, norm, depth"),
        ("hybrid:faiss:Flat", "l2", "fuses similarities; use metric cosine or ip, not l2"),
        ("hybrid:lucene:Flat", "cosine", "unknown index backend 'lucene'"),
        ("hybrid:faiss:NoSuchIndex", "cosine", "faiss cannot build 'NoSuchIndex'"),
    ],
)
def test_bad_specs_are_one_line_errors(encoder, spec, metric, message) -> None:
    with pytest.raises(EmbedkitError, match=message) as error:
        build_index(encoder, ["the cat sat"], spec=spec, metric=metric)
    assert "\n" not in str(error.value)


def test_a_hybrid_index_needs_an_encoder() -> None:
    with pytest.raises(ConfigError, match="'hybrid:torch' embeds its documents: give an encoder"):
        build_index(None, ["the cat sat"], spec="hybrid:torch")


def test_a_manifest_that_does_not_vouch_for_the_dense_file_is_refused(encoder, tmp_path) -> None:
    build_index(encoder, ["the cat sat", "a dog runs"], spec="hybrid:faiss:Flat").save(tmp_path / "idx")
    path = current_folder(tmp_path / "idx") / MANIFEST_FILE
    manifest = Manifest.from_json(path.read_text(), str(path))
    del manifest.files["index.faiss"]
    path.write_text(manifest.to_json())  # a consistent checksum: only the listing is wrong
    with pytest.raises(IndexFileError, match="gives no size and sha256 for index.faiss") as error:
        Index.load(tmp_path / "idx")
    assert "\n" not in str(error.value)
