"""The ``bm25`` index: ranks as bm25s does, saves and loads, rebuilds on add and remove, refuses bad specs."""

from __future__ import annotations

import numpy as np
import pytest

from embedkit.errors import ConfigError, DataError, UnknownNameError
from embedkit.index import Index, IndexFileError, build_index
from embedkit.index.bm25 import BM25Backend
from embedkit.index.spec import IndexSpec

bm25s = pytest.importorskip("bm25s")
Stemmer = pytest.importorskip("Stemmer")

WORDS = [
    "run", "runs", "running", "runner", "boundary", "layer", "layers", "flow", "flows", "heat", "heated",
    "heating", "wing", "wings", "shock", "pressure", "the", "of", "and", "a", "in", "on", "supersonic", "laminar",
    "turbulent", "plate", "plates",
]


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    """200 documents and 32 queries of words drawn from a small vocabulary with inflections and stop words."""
    rng = np.random.default_rng(0)
    documents = [" ".join(rng.choice(WORDS, size=rng.integers(3, 15))) for _ in range(200)]
    for position in (7, 70, 170):  # a rare word, which few documents match
        documents[position] += " hypersonic"
    queries = [" ".join(rng.choice(WORDS, size=3)) for _ in range(30)] + ["hypersonic flows", "the hypersonic"]
    return documents, queries


def bm25s_directly(documents: list[str], queries: list[str], k: int, k1: float = 1.5, b: float = 0.75):
    """bm25s on its own, with the analysis that the bm25 index documents: scores and positions, best first."""
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(bm25s.tokenize(documents, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)
    positions, scores = retriever.retrieve(tokens, k=k, show_progress=False)
    return scores, positions


@pytest.mark.parametrize(("spec", "k1", "b"), [("bm25", 1.5, 0.75), ("bm25:k1=0.9,b=0.4", 0.9, 0.4)])
def test_bm25_ranks_as_bm25s_does(corpus, spec, k1, b) -> None:
    documents, queries = corpus
    index = build_index(None, documents, spec=spec)
    scores, found = index.search(queries, k=10)
    expected_scores, expected_positions = bm25s_directly(documents, queries, 10, k1, b)
    matched = expected_scores > 0
    assert matched.any() and not matched.all()  # some queries match fewer than 10 documents
    np.testing.assert_allclose(scores[matched], expected_scores[matched], rtol=1e-6)
    np.testing.assert_array_equal(found[matched], expected_positions[matched])  # list corpus: ids are positions
    assert (found[~matched] == -1).all() and (scores[~matched] == -np.inf).all()  # no match, no result
    assert index.manifest.model_name == "" and index.manifest.dimension == 0  # no model is involved


def test_a_query_with_no_known_term_finds_nothing(corpus) -> None:
    index = build_index(None, corpus[0], spec="bm25")
    _, found = index.search(["zebra of the", "plates"], k=3)
    assert (found[0] == -1).all() and (found[1] >= 0).all()


def test_round_trip_and_updates_rebuild_from_the_stored_texts(corpus, tmp_path) -> None:
    documents, queries = corpus
    rows = [(f"doc-{i}", text, {"n": i}) for i, text in enumerate(documents)]
    index = build_index(None, rows[:150], spec="bm25")
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx")
    before = index.search(queries, k=10)
    after = loaded.search(queries, k=10, return_payloads=True)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.scores, before.scores)
    assert after.metadata[0, 0] == {"n": int(after.ids[0, 0][4:])}

    with Index.update(tmp_path / "idx") as changing:
        changing.add(rows[150:])
        assert changing.remove([f"doc-{i}" for i in range(0, 200, 3)]) == 67
    kept = [row for row in rows if int(row[0][4:]) % 3]
    fresh = build_index(None, kept, spec="bm25")  # the corpus statistics (idf, mean length) of what is left
    updated = Index.load(tmp_path / "idx")
    assert len(updated) == len(kept) == updated.info()["backend"]["ntotal"]
    expected = fresh.search(queries, k=10)
    result = updated.search(queries, k=10)
    np.testing.assert_array_equal(result.ids, expected.ids)
    np.testing.assert_allclose(result.scores, expected.scores, rtol=1e-6)


def test_an_emptied_index_saves_loads_and_finds_nothing(tmp_path) -> None:
    index = build_index(None, [("a", "boundary layer flow")], spec="bm25")
    index.remove(["a"])
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx")
    assert len(loaded) == 0 and (loaded.search(["boundary"], k=2).ids == None).all()  # an object array: == compares each
    with Index.update(tmp_path / "idx") as changing:
        changing.add([("b", "boundary layer")])
    assert Index.load(tmp_path / "idx").search("boundary layers", k=1).ids.tolist() == [["b"]]


def test_an_encoder_is_ignored_and_vectors_are_refused(corpus, tiny_model_path) -> None:
    from embedkit.encoders import load_encoder

    encoder = load_encoder(tiny_model_path)
    index = build_index(encoder, corpus[0][:20], spec="bm25", embeddings=np.zeros((3, 5)))  # neither is used
    assert index.manifest.model_name == "" and index.info()["model"] == {"name": "", "fingerprint": ""}
    index.check_encoder(encoder)  # any encoder fits: it is not used
    with pytest.raises(ConfigError, match="searches texts: give the query texts, not vectors"):
        index.search(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(ConfigError, match="embeds nothing, so it has no encoder"):
        _ = index.encoder
    with pytest.raises(ConfigError, match="no search parameters"):
        index.set_search_params(nprobe=4)


@pytest.mark.parametrize(
    ("spec", "metric", "message"),
    [
        ("bm25:k1=-1", "cosine", "option k1 must be a number >= 0, got '-1'"),
        ("bm25:b=2", "cosine", r"option b must be a number in \[0, 1\], got '2'"),
        ("bm25:b=x", "cosine", "option b must be a number"),
        ("bm25:k2=1", "cosine", "unknown option 'k2'; valid: k1, b"),
        ("bm25:k1", "cosine", "options look like name=value, got 'k1'"),
        ("bm25:k1=1,k1=2", "cosine", "option 'k1' is given twice"),
        ("bm25", "l2", "BM25 scores are similarities; use metric cosine or ip, not l2"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, metric, message) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        build_index(None, ["boundary layer"], spec=spec, metric=metric)
    assert "\n" not in str(error.value) and spec in str(error.value)


def test_an_unknown_backend_lists_bm25_and_hybrid() -> None:
    with pytest.raises(UnknownNameError, match="bm25, faiss, hybrid, torch"):
        build_index(None, ["x y"], spec="lucene")


def test_files_that_disagree_with_the_spec_are_refused(corpus, tmp_path) -> None:
    index = build_index(None, corpus[0][:10], spec="bm25")
    folder = tmp_path / "files"
    folder.mkdir()
    index.backend.save(folder)
    with pytest.raises(IndexFileError, match="holds k1=1.5, b=0.75, method lucene, but the manifest's spec"):
        BM25Backend.load(folder, IndexSpec("bm25", "k1=0.9"), 0, "ip", "auto")
    (folder / "bm25.vocab.index.json").write_text("{not json")
    with pytest.raises(IndexFileError, match="not a readable bm25s index"):
        BM25Backend.load(folder, IndexSpec("bm25"), 0, "ip", "auto")


def test_blank_and_duplicate_documents_are_refused_as_for_any_index() -> None:
    with pytest.raises(DataError, match="corpus item 1: a blank text"):
        build_index(None, ["boundary layer", "  "], spec="bm25")
    with pytest.raises(DataError, match="occurs twice"):
        build_index(None, [("a", "boundary"), ("a", "layer")], spec="bm25")
