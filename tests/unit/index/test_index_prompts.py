"""Prompts in indexes: documents embedded after the document prompt the manifest records, queries after the query
prompt, and a warning when the encoder's model declares another document prompt than the index was built with."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from embedkit.encoders import load_encoder
from embedkit.errors import ConfigError
from embedkit.index import Index, build_index
from embedkit.index.folder import current_folder
from embedkit.index.index import PromptMismatchWarning
from embedkit.index.store import content_checksum

DOCS = ["the cat sat on the mat", "a dog runs in the park", "the sun rises in the east", "rain falls on the hills"]
QUERIES = ["a cat on a mat", "the rain", "a dog in the park"]


@pytest.fixture(scope="module")
def encoder(prompted_model_path):
    return load_encoder(prompted_model_path, device="cpu", precision="fp32")


def test_documents_and_queries_are_embedded_as_sentence_transformers_embeds_them(encoder, prompted_model_path):
    index = build_index(encoder, DOCS)
    assert index.manifest.document_prompt == "passage: " and index.info()["document_prompt"] == "passage: "
    reference = SentenceTransformer(str(prompted_model_path), device="cpu")
    documents = reference.encode_document(DOCS, normalize_embeddings=True)
    queries = reference.encode_query(QUERIES, normalize_embeddings=True)
    expected = queries @ documents.T
    scores, ids = index.search(QUERIES, k=len(DOCS))
    np.testing.assert_allclose(scores, np.take_along_axis(expected, ids, axis=1), atol=1e-5)
    assert ids.tolist() == np.argsort(-expected, axis=1, kind="stable").tolist()


def test_a_saved_index_searches_alike_after_loading(encoder, tmp_path) -> None:
    index = build_index(encoder, DOCS)
    index.save(tmp_path / "idx")
    manifest = json.loads((current_folder(tmp_path / "idx") / "manifest.json").read_text())
    assert manifest["document_prompt"] == "passage: "
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptMismatchWarning)
        found = Index.load(tmp_path / "idx", encoder=encoder).search(QUERIES, k=3)
        Index.load(tmp_path / "idx").search(QUERIES, k=1)  # the manifest's model, loaded on the first query
    expected = index.search(QUERIES, k=3)
    np.testing.assert_allclose(found.scores, expected.scores, atol=1e-6)
    assert found.ids.tolist() == expected.ids.tolist()


def test_queries_take_another_prompt_when_asked(encoder) -> None:
    index = build_index(encoder, DOCS)
    for options, prompt in (({"prompt": ""}, ""), ({"prompt_name": "document"}, "passage: ")):
        vectors = encoder.encode(QUERIES, prompt=prompt)
        expected = index.search(vectors, k=3)
        found = index.search(QUERIES, k=3, **options)
        np.testing.assert_allclose(found.scores, expected.scores, atol=1e-6)
    with pytest.raises(ConfigError, match="unknown prompt name 'passage'"):
        index.search(QUERIES, k=3, prompt_name="passage")


def test_documents_added_later_get_the_recorded_prompt(encoder, tmp_path) -> None:
    index = build_index(encoder, DOCS[:2], prompt="doc: ")
    assert index.manifest.document_prompt == "doc: "
    index.save(tmp_path / "idx")
    with pytest.warns(PromptMismatchWarning), Index.update(tmp_path / "idx", encoder) as loaded:
        loaded.add([(2, DOCS[2]), (3, DOCS[3])])
    added = encoder.encode(DOCS[2:], prompt="doc: ", normalize=True)
    with pytest.warns(PromptMismatchWarning):
        reloaded = Index.load(tmp_path / "idx", encoder=encoder)
    scores, ids = reloaded.search(added, k=1)
    assert ids[:, 0].tolist() == [2, 3]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prompt": ""}, "built without a document prompt, but model .* declares the document prompt 'passage: '"),
        ({"prompt": "doc: "}, "built after the document prompt 'doc: ', but model .* declares the document prompt"),
    ],
)
def test_an_encoder_declaring_another_document_prompt_warns(encoder, tmp_path, options, message) -> None:
    build_index(encoder, DOCS, **options).save(tmp_path / "idx")
    with pytest.warns(PromptMismatchWarning, match=message):
        Index.load(tmp_path / "idx", encoder=encoder)
    with pytest.warns(PromptMismatchWarning, match=message):
        Index.load(tmp_path / "idx").search(QUERIES, k=1)  # the manifest's model, loaded on the first query


def test_an_index_saved_before_prompts_were_recorded_was_built_without_one(tiny_model_path, tmp_path) -> None:
    plain = load_encoder(tiny_model_path, device="cpu", precision="fp32")
    build_index(plain, DOCS).save(tmp_path / "idx")
    path = current_folder(tmp_path / "idx") / "manifest.json"
    document = json.loads(path.read_text())
    del document["checksum"], document["document_prompt"]
    path.write_text(json.dumps({**document, "checksum": content_checksum(document)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptMismatchWarning)  # the plain model declares no document prompt either
        assert Index.load(tmp_path / "idx", encoder=plain).manifest.document_prompt == ""
