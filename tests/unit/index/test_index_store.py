"""Index folders: ids, payloads, add and remove, atomic saves, corrupt files, and refusing another model."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from embedkit.encoders import build_tiny_model, load_encoder
from embedkit.errors import ConfigError, DataError, UnknownNameError
from embedkit.index import Index, IndexFileError, IndexMismatchError, as_corpus, build_index, parse_spec
from embedkit.index.folder import current_folder
from embedkit.index.spec import IndexSpec
from embedkit.index.store import PayloadStore, content_checksum

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

DOCS = [
    ("d1", "the cat sat on the mat", {"topic": "cats"}),
    ("d2", "a dog runs in the park", {"topic": "dogs"}),
    ("d3", "the sun rises in the east", None),
    ("d4", "rain falls on the green hills", {"topic": "weather", "n": 4}),
    ("d5", "she plays the piano every evening", None),
    ("d6", "he reads a book about old ships", None),
]


@pytest.fixture(scope="module")
def encoder(tiny_model_path):
    return load_encoder(tiny_model_path, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def other_encoder(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("other") / "model", [text for _, text, _ in DOCS], seed=1)
    return load_encoder(path, device="cpu", precision="fp32")


@pytest.mark.parametrize("spec", ["torch", "faiss:Flat", "faiss:HNSW8"])
def test_string_ids_texts_and_metadata_round_trip(encoder, tmp_path, spec) -> None:
    index = build_index(encoder, DOCS, spec=spec)
    result = index.search(["the cat sat on the mat", "rain on hills"], k=3, return_payloads=True)
    assert result.ids.dtype == object and result.ids[0, 0] == "d1" and result.texts[0, 0] == DOCS[0][1]
    assert result.metadata[0, 0] == {"topic": "cats"} and result.scores.dtype == np.float32
    assert result.scores[0, 0] == pytest.approx(1.0, abs=1e-5)  # cosine of a text with itself
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx", encoder=encoder)
    again = loaded.search(["the cat sat on the mat", "rain on hills"], k=3, return_payloads=True)
    np.testing.assert_array_equal(again.ids, result.ids)
    np.testing.assert_allclose(again.scores, result.scores, rtol=1e-5)
    assert again.metadata[1].tolist() == result.metadata[1].tolist()


def test_int_ids_stay_ints(encoder, tmp_path) -> None:
    index = build_index(encoder, [text for _, text, _ in DOCS], spec="faiss:Flat")
    scores, ids = index.search("a dog runs in the park", k=8)
    assert ids.dtype == np.int64 and ids[0, 0] == 1 and (ids[0, 6:] == -1).all() and np.isinf(scores[0, 6:]).all()
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx", encoder=encoder)
    assert loaded.manifest.id_type == "int" and loaded.search("a dog runs in the park", k=1).ids[0, 0] == 1
    with pytest.raises(DataError, match="the index holds int ids"):
        loaded.add([("x", "a new text")])
    with pytest.raises(DataError, match="-1 marks empty result slots"):
        build_index(encoder, [(-1, "text")])


def test_bad_ids_are_refused_before_anything_is_encoded(encoder) -> None:
    with pytest.raises(DataError, match="id 'd1' occurs twice"):
        build_index(encoder, [("d1", "a"), ("d1", "b")])
    with pytest.raises(DataError, match="ids must be int or str, got float"):
        build_index(encoder, [(1.5, "a")])
    index = build_index(encoder, DOCS)
    with pytest.raises(DataError, match="already in the index"):
        index.add([("d9", "new"), ("d2", "again")])
    assert len(index) == len(DOCS) and index.store.present(["d9"]) == []


def test_blank_texts_are_refused_naming_where_before_anything_is_encoded(encoder, tmp_path, monkeypatch) -> None:
    def no_encoding(*args, **kwargs):
        raise AssertionError("nothing may be encoded")

    monkeypatch.setattr(encoder, "encode", no_encoding)
    files = {
        "gap.txt": ("the cat sat\n\na dog runs\n", 2),  # skipping line 2 would shift the id of line 3
        "space.jsonl": ('{"_id": "a", "text": "the cat"}\n{"_id": "b", "title": "", "text": " \\t"}\n', 2),
        "rows.csv": ("id,text\n1,the cat\n2,\n", 3),
    }
    for name, (text, line) in files.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=f"^{tmp_path / name}:{line}: a blank text"):
            build_index(encoder, tmp_path / name)
    for corpus in (["the cat", "  "], [("d1", "the cat"), ("d2", "")]):
        with pytest.raises(DataError, match="^corpus item 1: a blank text"):
            build_index(encoder, corpus)
    monkeypatch.undo()
    index = build_index(encoder, DOCS[:2])
    monkeypatch.setattr(encoder, "encode", no_encoding)
    with pytest.raises(DataError, match="^corpus item 1: a blank text"):
        index.add([("d8", "the moon"), ("d9", "\n")])
    assert len(index) == 2


def test_blank_documents_are_kept_when_allowed_at_their_positions(encoder, tmp_path) -> None:
    (tmp_path / "gap.txt").write_text("the cat sat\n\na dog runs\n\n")
    index = build_index(encoder, as_corpus(tmp_path / "gap.txt", allow_blank=True))
    assert len(index) == 3  # the blank line is document 1, so that "a dog runs" keeps its line's position
    assert index.search("a dog runs", k=1).ids[0, 0] == 2
    (tmp_path / "beir.jsonl").write_text('{"_id": "e", "title": "", "text": ""}\n{"_id": "c", "text": "the cat"}\n')
    assert len(build_index(encoder, as_corpus(tmp_path / "beir.jsonl", allow_blank=True))) == 2
    assert len(build_index(encoder, as_corpus(["the cat", " "], allow_blank=True))) == 2


def test_a_title_alone_is_a_text_and_trailing_blank_lines_shift_nothing(encoder, tmp_path) -> None:
    (tmp_path / "titled.jsonl").write_text('{"_id": "t", "title": "Sails", "text": ""}\n')
    titled = build_index(encoder, tmp_path / "titled.jsonl").search("Sails", k=1, return_payloads=True)
    assert titled.ids[0, 0] == "t" and titled.texts[0][0] == "Sails "
    (tmp_path / "trailing.txt").write_text("the cat sat\na dog runs\n\n\n")
    assert len(build_index(encoder, tmp_path / "trailing.txt")) == 2


@pytest.mark.filterwarnings("ignore::embedkit.index.IndexWarning")  # an IVF on 4 vectors, on purpose
@pytest.mark.parametrize("spec", ["torch", "faiss:Flat", "faiss:IVF2,Flat", "faiss:HNSW8"])
def test_add_and_remove_by_external_id(encoder, tmp_path, spec) -> None:
    index = build_index(encoder, DOCS[:4], spec=spec)
    if "IVF" in spec:
        index.set_search_params(nprobe=2)
    assert index.add(DOCS[4:]) == 2 and len(index) == 6
    assert index.search("she plays the piano every evening", k=1).ids[0, 0] == "d5"
    assert index.remove(["d5", "d1"]) == 2 and len(index) == 4
    assert set(index.search(["she plays the piano every evening"], k=6).ids[0]) == {"d2", "d3", "d4", "d6", None}
    with pytest.raises(DataError, match="not in the index"):
        index.remove(["d2", "nope"])
    assert len(index) == 4  # nothing removed when one id is unknown
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx", encoder=encoder)
    assert len(loaded) == 4 and loaded.add([("d1", "the cat is back")]) == 1  # a removed id may come back
    assert loaded.search("the cat is back", k=1).ids[0, 0] == "d1"


def test_manifest_and_info(encoder, tmp_path) -> None:
    index = build_index(encoder, DOCS, spec="faiss:Flat", metric="ip")
    index.save(tmp_path / "idx")
    manifest = json.loads((current_folder(tmp_path / "idx") / "manifest.json").read_text())
    assert manifest["model"]["name"] == encoder.name and manifest["model"]["fingerprint"].startswith("sha256:")
    assert (manifest["dimension"], manifest["metric"], manifest["normalize"], manifest["spec"]) == (
        32,
        "ip",
        False,
        "faiss:Flat",
    )
    assert (
        manifest["count"] == 6 and manifest["id_type"] == "str" and manifest["created"] and manifest["embedkit_version"]
    )
    assert set(manifest["files"]) == {"index.faiss", "payloads.sqlite"}
    info = Index.load(tmp_path / "idx").info()
    assert info["count"] == 6 and info["backend"]["faiss_class"] == "IndexFlatIP"


def test_a_crash_while_saving_leaves_the_previous_index(encoder, tmp_path, monkeypatch) -> None:
    index = build_index(encoder, DOCS[:3], spec="faiss:Flat")
    index.save(tmp_path / "idx")
    index.add(DOCS[3:])

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PayloadStore, "save", crash)  # after the faiss file was written
    with pytest.raises(OSError, match="disk full"):
        index.save(tmp_path / "idx")
    assert len(Index.load(tmp_path / "idx")) == 3
    # no half-written version left behind; the writers' lock file stays beside the folder
    assert sorted(path.name for path in tmp_path.iterdir()) == [".idx.lock", "idx"]
    assert sorted(path.name for path in (tmp_path / "idx").iterdir()) == ["CURRENT", "v-000001"]
    monkeypatch.undo()
    index.save(tmp_path / "idx")
    assert len(Index.load(tmp_path / "idx")) == 6


def test_saving_over_an_unrelated_folder_is_refused(encoder, tmp_path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an embedkit index folder"):
        build_index(encoder, DOCS).save(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


@pytest.mark.parametrize("spec", ["torch", "faiss:Flat"])
def test_corrupt_or_truncated_files_are_clear_errors(encoder, tmp_path, spec) -> None:
    root = build_index(encoder, DOCS, spec=spec).save(tmp_path / "idx")
    folder = current_folder(root)
    vectors = folder / ("index.faiss" if spec.startswith("faiss") else "vectors.safetensors")
    original = vectors.read_bytes()
    vectors.write_bytes(original[: len(original) // 2])
    with pytest.raises(IndexFileError, match="corrupt or truncated"):
        Index.load(root)
    # garbage that passes the checksum (the manifest rewritten to match) still fails cleanly in the reader
    vectors.write_bytes(b"\x00garbage" * 10)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][vectors.name] = {
        "bytes": 80,
        "sha256": __import__("hashlib").sha256(b"\x00garbage" * 10).hexdigest(),
    }
    del manifest["checksum"]
    manifest["checksum"] = content_checksum(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match="not a readable"):
        Index.load(root)
    (folder / "manifest.json").write_text("{ not json")
    with pytest.raises(IndexFileError, match="not a valid index manifest"):
        Index.load(root)
    (folder / "manifest.json").unlink()
    with pytest.raises(IndexFileError, match="no manifest.json"):
        Index.load(root)
    with pytest.raises(IndexFileError, match="no such index folder"):
        Index.load(tmp_path / "missing")


def test_a_corrupt_payload_database_is_a_clear_error(encoder, tmp_path) -> None:
    root = build_index(encoder, DOCS).save(tmp_path / "idx")
    folder = current_folder(root)
    (folder / "payloads.sqlite").unlink()
    with pytest.raises(IndexFileError, match="payloads.sqlite: missing"):
        Index.load(root)
    (folder / "payloads.sqlite").write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    with pytest.raises(IndexFileError, match="not a readable payload database"):
        PayloadStore.open(folder / "payloads.sqlite")
    with pytest.raises(sqlite3.DatabaseError):  # what the store turns into that error
        sqlite3.connect(folder / "payloads.sqlite").execute("SELECT * FROM items").fetchall()


def test_another_model_or_dimension_is_refused_with_both_names(
    encoder, other_encoder, tmp_path, tiny_model_path
) -> None:
    folder = build_index(encoder, DOCS).save(tmp_path / "idx")
    with pytest.raises(IndexMismatchError) as error:
        Index.load(folder, encoder=other_encoder)
    assert encoder.name in str(error.value) and other_encoder.name in str(error.value)
    index = Index.load(folder)
    with pytest.raises(IndexMismatchError, match="do not fit this index of dimension 32"):
        index.search(np.zeros((2, 16), dtype=np.float32))
    narrow = load_encoder(
        build_tiny_model(tmp_path / "narrow", ["the cat"], hidden_size=16), device="cpu", precision="fp32"
    )
    with pytest.raises(IndexMismatchError, match="dimension 32.*dimension 16"):
        index.encoder = narrow
    assert index.search(["the cat sat on the mat"], k=1).ids[0, 0] == "d1"  # loads the manifest's model itself


def test_metrics_and_normalisation(encoder) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((6, 32)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None]
    queries = rng.standard_normal((2, 32)).astype(np.float32) * 5
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for spec in ("torch", "faiss:Flat"):
        cosine = build_index(encoder, DOCS, spec=spec, metric="cosine", embeddings=vectors)
        expected = np.sort(queries @ unit.T / np.linalg.norm(queries, axis=1, keepdims=True), axis=1)[:, ::-1]
        np.testing.assert_allclose(cosine.search(queries, k=6).scores, expected, rtol=1e-4, atol=1e-5)
        ip = build_index(encoder, DOCS, spec=spec, metric="ip", embeddings=vectors)
        np.testing.assert_allclose(
            ip.search(queries, k=6).scores, np.sort(queries @ vectors.T, axis=1)[:, ::-1], rtol=1e-4
        )
        l2 = build_index(encoder, DOCS, spec=spec, metric="l2", embeddings=vectors)
        distances = np.sort(((queries[:, None] - vectors[None]) ** 2).sum(-1), axis=1)
        np.testing.assert_allclose(l2.search(queries, k=6).scores, distances, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::embedkit.index.IndexWarning")
def test_training_reuses_the_sample_embeddings(encoder) -> None:
    texts = [
        f"{a} {b} {c}"
        for a in ("the cat", "a dog", "the sun")
        for b in ("sat", "runs", "rises")
        for c in ("east", "park", "mat", "hills", "book")
    ]
    built = build_index(encoder, texts, spec="faiss:IVF2,Flat", seed=3, chunk_size=7)
    given = build_index(
        encoder, texts, spec="faiss:IVF2,Flat", seed=3, embeddings=encoder.encode(texts, normalize=True)
    )
    built.set_search_params(nprobe=1)
    given.set_search_params(nprobe=1)
    np.testing.assert_array_equal(built.search(texts[:5], k=4).ids, given.search(texts[:5], k=4).ids)


@pytest.mark.filterwarnings("ignore::embedkit.index.IndexWarning")
def test_search_params_are_saved(encoder, tmp_path) -> None:
    index = build_index(encoder, DOCS + [(f"x{i}", f"extra text {i}") for i in range(40)], spec="faiss:IVF2,Flat")
    index.set_search_params(nprobe=2)
    loaded = Index.load(index.save(tmp_path / "idx"))
    assert loaded.info()["search_params"] == {"nprobe": 2} and loaded.info()["backend"]["search_params"] == {
        "nprobe": 2
    }


def test_corpus_files_and_beir_folders(encoder, tmp_path, shared_data) -> None:
    (tmp_path / "beir").mkdir()
    rows = [
        {"_id": "7", "title": "Wings", "text": "lift at speed", "metadata": {"a": 1}},
        {"_id": "8", "title": "", "text": "drag"},
    ]
    (tmp_path / "beir" / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    index = build_index(encoder, tmp_path / "beir")
    result = index.search("drag", k=2, return_payloads=True)
    assert set(result.ids[0]) == {"7", "8"}
    texts = dict(zip(result.ids[0], result.texts[0], strict=True))
    metadata = dict(zip(result.ids[0], result.metadata[0], strict=True))
    assert texts == {"7": "Wings lift at speed", "8": "drag"} and metadata["7"] == {
        "title": "Wings",
        "metadata": {"a": 1},
    }
    # words of the tiny model's vocabulary, so that the two lines embed apart
    (tmp_path / "lines.txt").write_text("the cat sat on the mat\nrain falls on the green hills\n")
    assert build_index(encoder, tmp_path / "lines.txt").search("rain falls on the hills", k=1).ids[0, 0] == 1
    (tmp_path / "bad.jsonl").write_text('{"_id": "1", "text": "ok"}\n{"_id": "2"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: column 'text'"):
        build_index(encoder, tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=r"cranfield/corpus.jsonl:471: a blank text"):  # two documents are empty
        build_index(encoder, shared_data / "cranfield" / "corpus.jsonl")
    corpus = as_corpus(shared_data / "cranfield" / "corpus.jsonl", allow_blank=True)
    cranfield = build_index(encoder, corpus, spec="faiss:Flat", batch_size=128)
    assert len(cranfield) == 1400 and cranfield.manifest.id_type == "str"
    assert cranfield.search("what similarity laws must be obeyed", k=3).ids.dtype == object


def test_specs_and_metrics_are_checked() -> None:
    assert parse_spec("faiss:IVF1024,Flat") == IndexSpec("faiss", "IVF1024,Flat")
    assert str(parse_spec("torch")) == "torch" and parse_spec(" faiss ").options == ""
    with pytest.raises(UnknownNameError, match="unknown index backend 'annoy'; valid names: bm25, faiss, hybrid, torch"):
        parse_spec("annoy:trees=10")
    with pytest.raises(ConfigError, match="non-empty string"):
        parse_spec("")


def test_bad_search_arguments(encoder) -> None:
    index = build_index(encoder, DOCS)
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        index.search("x", k=0)
    with pytest.raises(ConfigError, match="unknown metric 'dot'; valid: cosine, ip, l2"):
        build_index(encoder, DOCS, metric="dot")
    assert index.search([], k=3).scores.shape == (0, 3)
