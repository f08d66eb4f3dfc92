"""Quantized indexes: SQ8 and binary faiss specs, rescoring with float32 or int8 vectors kept on disk, their
manifest record, and codes equal to sentence-transformers' ``quantize_embeddings``."""

from __future__ import annotations

import gc
import json
import stat
from pathlib import Path

import faiss
import numpy as np
import pytest
from sentence_transformers.util import quantize_embeddings

from embedkit.encoders import load_encoder
from embedkit.errors import ConfigError
from embedkit.index import BACKENDS, Index, IndexFileError, IndexWarning, build_index, exact_search, parse_spec
from embedkit.index.arrays import normalized
from embedkit.index.binary import binarize
from embedkit.index.folder import current_folder
from embedkit.index.rescore import (
    RESCORE_FILE,
    RescoreVectors,
    dequantize_int8,
    int8_ranges,
    quantize_int8,
    write_safetensors,
)

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

DIM = 32  # the tiny model's dimension
RECALL_DIM = 256


@pytest.fixture(scope="module")
def encoder(tiny_model_path):
    return load_encoder(tiny_model_path, device="cpu", precision="fp32")


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 50 centres, as embeddings cluster by topic; neighbours within a centre are close calls,
    which one bit per dimension cannot tell apart."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((50, dim)).astype(np.float32)
    return normalized(centres[rng.integers(0, 50, n)] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32))


def backend(spec: str, corpus: np.ndarray, metric: str = "ip"):
    parsed = parse_spec(spec)
    built = BACKENDS.get(parsed.backend).create(parsed, corpus.shape[1], metric, "auto")
    if built.needs_training:
        built.train(corpus[: built.training_size(len(corpus))])
    built.add(corpus, np.arange(len(corpus)))
    return built


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


def documents(n: int, seed: int = 0) -> tuple[list[tuple[str, str, dict[str, int]]], np.ndarray]:
    """``n`` documents with string ids and metadata, and their ``[n, 32]`` embeddings."""
    docs = [(f"doc-{i}", f"text {i}", {"n": i}) for i in range(n)]
    return docs, clustered(n, DIM, seed)


# -- codes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [32, 20])  # 20: the last byte is padded
def test_binary_codes_equal_sentence_transformers_ubinary(dim) -> None:
    vectors = np.random.default_rng(0).standard_normal((50, dim)).astype(np.float32)
    vectors[0, :3] = 0.0  # zero is not positive: bit 0, as in quantize_embeddings
    np.testing.assert_array_equal(binarize(vectors), quantize_embeddings(vectors, precision="ubinary"))
    built = backend("faiss:BFlat", vectors)
    stored = faiss.downcast_IndexBinary(built.index.index).reconstruct_n(0, 50)  # the codes faiss keeps
    np.testing.assert_array_equal(stored, quantize_embeddings(vectors, precision="ubinary"))


def test_int8_codes_equal_sentence_transformers_int8() -> None:
    rng = np.random.default_rng(0)
    sample, vectors = (
        rng.standard_normal((200, 16)).astype(np.float32),
        rng.standard_normal((50, 16)).astype(np.float32),
    )
    vectors[0] = 10  # outside the calibrated ranges: clipped
    ranges = int8_ranges(sample)
    expected = quantize_embeddings(vectors, precision="int8", calibration_embeddings=sample)
    np.testing.assert_array_equal(quantize_int8(vectors, ranges), expected)
    np.testing.assert_array_equal(quantize_int8(vectors, ranges), quantize_embeddings(vectors, "int8", ranges=ranges))
    decoded = dequantize_int8(quantize_int8(sample, ranges), ranges)
    assert np.abs(decoded - sample).max() <= ((ranges[1] - ranges[0]) / 255).max() / 2 + 1e-6  # half a step


def test_binary_scores_are_the_cosine_of_the_sign_vectors() -> None:
    corpus, queries = clustered(300, 64), clustered(5, 64, seed=1)
    scores, ids = backend("faiss:BFlat", corpus).search(queries, 10)
    signs = lambda x: np.where(x > 0, 1.0, -1.0)
    expected = signs(queries) @ signs(corpus).T / 64
    np.testing.assert_allclose(scores, np.take_along_axis(expected, ids, axis=1), atol=1e-6)
    np.testing.assert_allclose(scores, -np.sort(-expected, axis=1)[:, :10], atol=1e-6)  # and they are the best


# -- recall ----------------------------------------------------------------------------------------------------
def test_rescoring_recovers_the_recall_that_binary_codes_lose() -> None:
    corpus, queries = clustered(4000, RECALL_DIM), clustered(60, RECALL_DIM, seed=1)
    _, exact = exact_search(queries, corpus, 10)
    found = {
        spec: recall(backend(spec, corpus).search(queries, 10)[1], exact)
        for spec in [
            "faiss:BFlat",
            "faiss:BFlat,rescore=10",
            "faiss:BFlat,rescore=10,rescore_dtype=int8",
            "faiss:SQ8",
            "faiss:SQ8,rescore=2",
            "faiss:BIVF8,rescore=10",
            "faiss:BHNSW16,rescore=10",
        ]
    }
    assert found["faiss:BFlat"] < 0.5  # one bit per dimension cannot order these close calls
    assert found["faiss:BFlat,rescore=10"] >= 0.95 and found["faiss:BFlat,rescore=10,rescore_dtype=int8"] >= 0.9
    assert found["faiss:SQ8"] >= 0.95 and found["faiss:SQ8,rescore=2"] >= 0.99
    assert found["faiss:BIVF8,rescore=10"] > found["faiss:BFlat"] and found["faiss:BHNSW16,rescore=10"] >= 0.9


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_float32_rescoring_gives_exact_scores(metric) -> None:
    corpus, queries = clustered(500, 64) * 3, clustered(20, 64, seed=1) * 3  # not unit length: l2 differs from ip
    scores, ids = backend("faiss:SQ8,rescore=4", corpus, metric).search(queries, 10)
    _, exact = exact_search(queries, corpus, 10, metric=metric)
    assert recall(ids, exact) >= 0.99
    if metric == "l2":
        expected = ((queries[:, None, :] - corpus[ids]) ** 2).sum(-1)
    else:
        expected = np.einsum("qd,qkd->qk", queries, corpus[ids])
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)


def test_fewer_documents_than_candidates_are_padded() -> None:
    scores, ids = backend("faiss:BFlat,rescore=4", clustered(3, DIM)).search(clustered(2, DIM, seed=1), 5)
    assert (ids[:, 3:] == -1).all() and (scores[:, 3:] == -np.inf).all() and sorted(ids[0, :3]) == [0, 1, 2]


# -- the index: round trip, add and remove, manifest ---------------------------------------------------------
SPECS = [
    "faiss:SQ8",
    "faiss:IVF4,SQ8,rescore=4",
    "faiss:BFlat",
    "faiss:BFlat,rescore=3",
    "faiss:BIVF4,rescore=4,rescore_dtype=int8",
    "faiss:BHNSW8,rescore=2",
]


@pytest.mark.parametrize("spec", SPECS)
def test_round_trip_add_and_remove(encoder, tmp_path, spec) -> None:
    docs, vectors = documents(300)
    index = build_index(encoder, docs, spec=spec, embeddings=vectors)
    queries = clustered(8, DIM, seed=1)
    before = index.search(queries, 5, return_payloads=True)
    assert before.ids[0, 0].startswith("doc-") and before.metadata[0, 0] == {"n": int(before.ids[0, 0][4:])}
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx", encoder=encoder)
    after = loaded.search(queries, 5)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-6)

    new_docs, new_vectors = [("new", "a new text", None)], clustered(1, DIM, seed=2)
    with Index.update(tmp_path / "idx", encoder) as changed:
        changed.add(new_docs, embeddings=new_vectors)
        assert changed.remove(["doc-0", "doc-1"]) == 2
    reloaded = Index.load(tmp_path / "idx", encoder=encoder)
    assert len(reloaded) == 299
    found = reloaded.search(np.concatenate([new_vectors, vectors[:2]]), 3).ids
    assert found[0, 0] == "new" and not {"doc-0", "doc-1"} & set(found.ravel())


def test_a_loaded_index_memory_maps_its_rescoring_vectors(encoder, tmp_path) -> None:
    docs, vectors = documents(100)
    build_index(encoder, docs, spec="faiss:BFlat,rescore=4", embeddings=vectors).save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx", encoder=encoder)
    rows = loaded.backend.vectors._rows()
    assert isinstance(rows, np.memmap) and Path(rows.filename) == current_folder(tmp_path / "idx") / RESCORE_FILE
    np.testing.assert_array_equal(np.asarray(rows), normalized(vectors))


def test_a_loaded_index_keeps_rescoring_after_its_version_was_removed(encoder, tmp_path) -> None:
    docs, vectors = documents(100)
    build_index(encoder, docs, spec="faiss:BFlat,rescore=4", embeddings=vectors).save(tmp_path / "idx")
    old = Index.load(tmp_path / "idx", encoder=encoder)
    with Index.update(tmp_path / "idx", encoder) as index:
        index.remove(["doc-0"])
    assert not (tmp_path / "idx" / "v-000001").exists()
    found = old.search(vectors[:1], 3)  # rescored from the memory map of the removed file
    assert found.ids[0, 0] == "doc-0" and found.scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_working_rows_stay_private_and_go_with_the_index(encoder) -> None:
    docs, vectors = documents(50)
    index = build_index(encoder, docs, spec="faiss:BFlat,rescore=2", embeddings=vectors)
    workdir = index.backend.vectors._workdir
    assert workdir.name.startswith("embedkit-index-") and stat.S_IMODE(workdir.stat().st_mode) == 0o700
    del index
    gc.collect()
    assert not workdir.exists()


def test_manifest_records_the_quantization_and_its_calibration(encoder, tmp_path) -> None:
    docs, vectors = documents(300)
    build_index(encoder, docs, spec="faiss:BIVF4,rescore=4,rescore_dtype=int8", embeddings=vectors).save(tmp_path / "b")
    manifest = json.loads((current_folder(tmp_path / "b") / "manifest.json").read_text())
    quantization = manifest["quantization"]
    assert quantization["codes"] == "binary" and quantization["code_bytes"] == DIM // 8
    assert "value is > 0" in quantization["threshold"] and "ubinary" in quantization["threshold"]
    rescore = quantization["rescore"]
    assert (rescore["factor"], rescore["dtype"], rescore["file"]) == (4, "int8", RESCORE_FILE)
    assert rescore["calibration"]["vectors"] == 300  # the training sample: the whole small corpus
    np.testing.assert_array_equal(
        np.array(rescore["calibration"]["ranges"], np.float32), int8_ranges(normalized(vectors))
    )
    assert set(manifest["files"]) == {"index.faiss", RESCORE_FILE, "payloads.sqlite"}
    assert Index.load(tmp_path / "b").info()["quantization"] == quantization

    build_index(encoder, docs, spec="faiss:IVF4,SQ8", embeddings=vectors).save(tmp_path / "s")
    quantization = json.loads((current_folder(tmp_path / "s") / "manifest.json").read_text())["quantization"]
    assert (quantization["codes"], quantization["qtype"], quantization["code_bytes"]) == ("scalar", "QT_8bit", DIM)
    assert quantization["calibration"]["stored_in"] == "index.faiss" and quantization["calibration"]["trained"]
    assert build_index(encoder, docs, spec="faiss:Flat", embeddings=vectors).info()["quantization"] == {}


def test_rescore_is_a_saved_search_parameter(encoder, tmp_path) -> None:
    docs, vectors = documents(300)
    index = build_index(encoder, docs, spec="faiss:BIVF4,rescore=2", embeddings=vectors)
    index.set_search_params(rescore=8, nprobe=4)
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx")
    assert loaded.backend.factor == 8 and loaded.info()["backend"]["search_params"] == {"nprobe": 4}
    with pytest.raises(ConfigError, match="rescore must be a whole number"):
        loaded.set_search_params(rescore=0.5)
    with pytest.raises(ConfigError, match="no search parameter efSearch"):
        loaded.set_search_params(efSearch=16)


def test_int8_calibration_on_few_vectors_warns(encoder) -> None:
    docs, vectors = documents(20)
    with pytest.warns(IndexWarning, match="calibrated on the first add, here 20 vectors"):
        build_index(encoder, docs, spec="faiss:BFlat,rescore=2,rescore_dtype=int8", embeddings=vectors)


# -- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("faiss:BFlat,refine=4", "has an unknown option 'refine'"),
        ("faiss:BFlat,rescore=4,rescore=2", "repeats 'rescore'"),
        ("faiss:BFlat,rescore=0", "at least 1, got '0'"),
        ("faiss:BFlat,rescore=x", "whole number of candidates"),
        ("faiss:BFlat,rescore_dtype=int8", "needs rescore=<r>"),
        ("faiss:BFlat,rescore=4,rescore_dtype=fp16", "rescore_dtype is float32 or int8"),
        ("faiss:rescore=4", "name the faiss index first"),
        ("faiss:BFlat,rescore=4,SQ8", "name the faiss index first"),
    ],
)
def test_bad_specs_are_one_line_errors_that_list_the_valid_forms(encoder, spec, message) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        build_index(encoder, ["a text"], spec=spec)
    assert "\n" not in str(error.value) and "faiss:BFlat,rescore=4" in str(error.value)


def test_binary_indexes_refuse_what_they_cannot_do(encoder) -> None:
    with pytest.raises(ConfigError, match="valid binary factories: BFlat, BIVF<nlist>") as error:
        build_index(encoder, ["a text"], spec="faiss:BPQ8")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="use metric cosine or ip"):
        build_index(encoder, ["a text"], spec="faiss:BFlat", metric="l2")
    with pytest.raises(ConfigError, match="searches on the CPU"):
        build_index(encoder, ["a text"], spec="faiss:BFlat", device="gpu")
    with pytest.raises(ConfigError, match="trains 64 IVF lists, so it needs at least 64 documents .* but the corpus has 3; the corpus is too small for IVF lists; use 'faiss:BFlat', which needs no training"):
        build_index(encoder, ["a", "b", "c"], spec="faiss:BIVF64")


def test_rescoring_files_that_do_not_fit_are_refused(tmp_path) -> None:
    ids = np.arange(4, dtype=np.int64)
    write_safetensors(tmp_path / RESCORE_FILE, {"ids": ids, "vectors": np.zeros((4, 8), np.float32)}, {})
    with pytest.raises(IndexFileError, match=r"expected ids \[n\] int64, vectors \[n, 16\] float32"):
        RescoreVectors.load(tmp_path, 16, "float32")
    with pytest.raises(IndexFileError, match=r"holds the tensors \['ids', 'vectors'\], not \['ids', 'ranges'"):
        RescoreVectors.load(tmp_path, 8, "int8")
    write_safetensors(tmp_path / RESCORE_FILE, {"ids": ids[::-1].copy(), "vectors": np.zeros((4, 8), np.float32)}, {})
    with pytest.raises(IndexFileError, match="not in ascending order"):
        RescoreVectors.load(tmp_path, 8, "float32")
    (tmp_path / RESCORE_FILE).write_bytes(b"broken")
    with pytest.raises(IndexFileError, match="not a readable safetensors file"):
        RescoreVectors.load(tmp_path, 8, "float32")


def test_a_binary_file_under_another_spec_is_refused(encoder, tmp_path) -> None:
    docs, vectors = documents(300)
    build_index(encoder, docs, spec="faiss:BFlat", embeddings=vectors).save(tmp_path / "idx")
    factory = BACKENDS.get("faiss")
    with pytest.raises(IndexFileError, match=r"holds IndexBinaryIDMap\(IndexBinaryFlat\)"):
        factory.load(current_folder(tmp_path / "idx"), parse_spec("faiss:BHNSW8"), DIM, "ip", "auto")
    faiss.write_index(faiss.IndexFlatIP(DIM), str(tmp_path / "index.faiss"))
    with pytest.raises(IndexFileError, match="not a readable faiss binary index"):
        factory.load(tmp_path, parse_spec("faiss:BFlat"), DIM, "ip", "auto")
