"""Indexes of cut (Matryoshka) embeddings: the manifest records truncate_dim, a loaded index cuts its queries the
same way, and an encoder of the same model at another size is refused saying which size to load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedkit.encoders import load_encoder
from embedkit.encoders.truncation import TruncatedEncoder
from embedkit.index import Index, IndexMismatchError, build_index
from embedkit.index.folder import current_folder

DOCS = [
    ("d1", "the cat sat on the mat"),
    ("d2", "a dog runs in the park"),
    ("d3", "the sun rises in the east"),
    ("d4", "rain falls on the green hills"),
]


@pytest.fixture(scope="module")
def full(tiny_model_path):
    return load_encoder(tiny_model_path, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def cut(tiny_model_path):
    return load_encoder(tiny_model_path, device="cpu", precision="fp32", truncate_dim=8)


def test_the_manifest_records_the_cut_and_a_loaded_index_reapplies_it(cut, tmp_path) -> None:
    index = build_index(cut, DOCS)
    before = index.search(["the cat"], k=4)
    folder = index.save(tmp_path / "idx")
    manifest = json.loads((current_folder(folder) / "manifest.json").read_text())
    assert (manifest["dimension"], manifest["truncate_dim"]) == (8, 8)

    loaded = Index.load(folder)  # no encoder given: the manifest's model, cut to 8 dimensions
    assert loaded.info()["truncate_dim"] == 8
    after = loaded.search(["the cat"], k=4)
    assert loaded.encoder.truncate_dim == 8
    assert after.ids.tolist() == before.ids.tolist()
    np.testing.assert_allclose(after.scores, before.scores, atol=1e-3)  # the loaded model runs in its "auto" precision
    with Index.update(folder) as writable:
        writable.add([("d5", "she plays the piano every evening")])
    assert len(Index.load(folder)) == 5


def test_an_index_of_cut_embeddings_refuses_the_whole_model_saying_which_size_to_load(cut, full, tmp_path) -> None:
    folder = build_index(cut, DOCS).save(tmp_path / "idx")
    with pytest.raises(IndexMismatchError) as error:
        Index.load(folder, encoder=full)
    message = str(error.value)
    assert "holds 8-dimensional (truncate_dim 8) embeddings" in message and "gives 32-dimensional ones" in message
    assert "load the model with truncate_dim=8 (--truncate-dim 8)" in message and "\n" not in message


def test_an_index_of_whole_embeddings_refuses_a_cut_model(cut, full, tmp_path) -> None:
    folder = build_index(full, DOCS).save(tmp_path / "idx")
    assert "truncate_dim" not in json.loads((current_folder(folder) / "manifest.json").read_text())
    assert Index.load(folder).info()["truncate_dim"] is None
    with pytest.raises(IndexMismatchError, match="gives 8-dimensional \\(truncate_dim 8\\) ones; load the model "
                                                 "without truncate_dim"):
        Index.load(folder, encoder=cut)


def test_an_index_built_through_a_view_records_its_cut(full, cut, tmp_path) -> None:
    index = build_index(TruncatedEncoder(full, 8), DOCS)
    assert index.manifest.truncate_dim == 8 and index.manifest.dimension == 8
    Index.load(index.save(tmp_path / "idx"), encoder=cut)  # the same model at the same size
