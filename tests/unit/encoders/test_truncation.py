"""truncate_dim: the first dimensions of each embedding, normalised again when the model normalises, as
sentence-transformers' truncate_dim gives them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize

from embedkit.encoders import load_encoder
from embedkit.encoders.truncation import TruncatedEncoder, truncated
from embedkit.errors import ConfigError

TEXTS = ["the cat sat on the mat", "a dog", "the sun rises in the east over the green hills", "rain"]


@pytest.fixture(scope="module")
def normalizing_model_path(tiny_model_path, tmp_path_factory):
    """The tiny model with a Normalize module last, as all-MiniLM-L6-v2 has."""
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    model.append(Normalize())
    path = tmp_path_factory.mktemp("normalizing") / "model"
    model.save(str(path))
    return path


def test_encode_and_forward_give_the_first_dimensions(tiny_model_path) -> None:
    full = load_encoder(tiny_model_path, precision="fp32")
    cut = load_encoder(tiny_model_path, precision="fp32", truncate_dim=8)
    assert (cut.dim, cut.full_dim, cut.truncate_dim, full.truncate_dim) == (8, 32, 8, None)
    assert not cut.normalizes
    np.testing.assert_allclose(cut.encode(TEXTS), full.encode(TEXTS)[:, :8], atol=1e-6)
    full.eval(), cut.eval()
    with torch.no_grad():
        torch.testing.assert_close(cut(TEXTS), full(TEXTS)[:, :8])
    assert cut.encode([]).shape == (0, 8)


def test_a_normalising_model_is_normalised_again_as_sentence_transformers_does_when_asked(
    normalizing_model_path,
) -> None:
    cut = load_encoder(normalizing_model_path, precision="fp32", truncate_dim=8)
    assert cut.normalizes
    reference = SentenceTransformer(str(normalizing_model_path), device="cpu", truncate_dim=8)
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(cut.encode(TEXTS), expected, atol=1e-6)
    # without being asked, sentence-transformers keeps the cut of the unit vector: the same direction, shorter
    shorter = reference.encode(TEXTS)
    assert (np.linalg.norm(shorter, axis=1) < 1).all()
    np.testing.assert_allclose(truncated(shorter, None, True), expected, atol=1e-6)
    cut.eval()
    with torch.no_grad():
        np.testing.assert_allclose(cut(TEXTS).norm(dim=1).numpy(), 1.0, rtol=1e-6)


def test_normalize_true_normalises_the_cut_of_any_model(tiny_model_path) -> None:
    cut = load_encoder(tiny_model_path, precision="fp32", truncate_dim=4)
    np.testing.assert_allclose(np.linalg.norm(cut.encode(TEXTS, normalize=True), axis=1), 1.0, rtol=1e-5)


def test_truncate_dim_can_be_changed_and_checked(tiny_model_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    encoder.truncate_dim = 16
    assert encoder.dim == 16 and encoder.encode(TEXTS).shape == (4, 16)
    encoder.truncate_dim = None
    assert encoder.dim == 32
    for bad, message in [(0, "positive integer, got 0"), (33, "33 exceeds the 32 dimensions"),
                         (2.5, "positive integer"), (True, "positive integer")]:
        with pytest.raises(ConfigError, match=message):
            encoder.truncate_dim = bad
    with pytest.raises(ConfigError, match="64 exceeds the 32 dimensions"):
        load_encoder(tiny_model_path, truncate_dim=64)


def test_save_writes_the_whole_model(tiny_model_path, tmp_path) -> None:
    load_encoder(tiny_model_path, truncate_dim=8).save(tmp_path / "saved")
    assert load_encoder(tmp_path / "saved").dim == 32


def test_the_view_cuts_like_the_encoder_and_keeps_the_rest(normalizing_model_path) -> None:
    full = load_encoder(normalizing_model_path, precision="fp32")
    view = TruncatedEncoder(full, 8)
    assert (view.dim, view.truncate_dim, view.name, view.model) == (8, 8, full.name, full.model)
    expected = load_encoder(normalizing_model_path, precision="fp32", truncate_dim=8).encode(TEXTS)
    np.testing.assert_allclose(view.encode(TEXTS), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="48 exceeds the 32 dimensions"):
        TruncatedEncoder(full, 48)
