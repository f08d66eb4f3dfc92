"""Reward-model representations as embeddings: a tiny BertForSequenceClassification built from a config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from embedkit.data.render import render_for
from embedkit.encoders import Encoder, load_encoder
from embedkit.encoders.reward import RewardModel, RewardModelEncoder, load_reward_model_encoder, pool
from embedkit.encoders.tiny import tiny_vocabulary
from embedkit.errors import ConfigError, EmbedkitError
from embedkit.losses.preference import RewardModelObjective
from embedkit.types import TextEncoder

TEXTS = ["the cat sat on the mat", "a dog", "the sun rises in the east over the green hills", "rain"]


def build_classifier(path, num_labels: int = 1):
    """A 2-layer BERT sequence classifier with a word-level vocabulary, saved like a hub model."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(tiny_vocabulary(TEXTS)) + "\n")
    BertTokenizerFast(vocab=str(path / "vocab.txt")).save_pretrained(str(path))
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=num_labels)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    return build_classifier(tmp_path_factory.mktemp("rm") / "model")


def reference_hidden(path, text: str) -> torch.Tensor:
    """``[T, H]`` last hidden states of one unpadded text, straight from transformers."""
    tokenizer = BertTokenizerFast.from_pretrained(str(path))
    model = BertForSequenceClassification.from_pretrained(str(path)).eval()
    with torch.no_grad():
        return model(**tokenizer([text], return_tensors="pt"), output_hidden_states=True).hidden_states[-1][0]


def test_reward_model_encoder_satisfies_the_text_encoder_protocol(classifier_path) -> None:
    encoder = load_reward_model_encoder(classifier_path, device="cpu")
    assert isinstance(encoder, RewardModelEncoder) and isinstance(encoder, TextEncoder)
    assert encoder.dim == 16 and encoder.max_seq_length == 32


@pytest.mark.parametrize("pooling", ["last", "mean", "cls"])
def test_embeddings_are_pooled_last_hidden_states(classifier_path, pooling) -> None:
    encoder = load_reward_model_encoder(classifier_path, pooling=pooling, precision="fp32")
    assert isinstance(encoder, RewardModelEncoder) and encoder.dim == 16 and encoder.name == str(classifier_path)
    embeddings = encoder.encode(TEXTS, batch_size=3)  # batches mix lengths, so padding is exercised
    assert embeddings.dtype == np.float32 and embeddings.shape == (4, 16)
    for text, row in zip(TEXTS, embeddings):
        hidden = reference_hidden(classifier_path, text)
        expected = {"last": hidden[-1], "mean": hidden.mean(0), "cls": hidden[0]}[pooling]
        np.testing.assert_allclose(row, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_last_pooling_handles_left_padding() -> None:
    hidden = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    torch.testing.assert_close(pool(hidden, right, "last"), hidden[[0, 1], [1, 2]])
    torch.testing.assert_close(pool(hidden, left, "last"), hidden[[0, 1], [2, 2]])
    torch.testing.assert_close(pool(hidden, right, "mean"), torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)]))


def test_normalize_and_reward_scores(classifier_path) -> None:
    encoder = load_reward_model_encoder(classifier_path, precision="fp32")
    np.testing.assert_allclose(np.linalg.norm(encoder.encode(TEXTS, normalize=True), axis=1), 1, rtol=1e-5)
    prompts, replies = ["the cat", "the sun"], [" sat on the mat", " rises"]
    tokenizer = BertTokenizerFast.from_pretrained(str(classifier_path))
    model = BertForSequenceClassification.from_pretrained(str(classifier_path)).eval()
    with torch.no_grad():
        expected = [model(**tokenizer([t], return_tensors="pt")).logits[0, 0].item()
                    for t in render_for(encoder, prompts, replies)]
    np.testing.assert_allclose(encoder.score(prompts, replies), expected, rtol=1e-4, atol=1e-5)


def test_a_classifier_with_several_labels_gives_embeddings_but_no_reward(tmp_path) -> None:
    encoder = load_reward_model_encoder(build_classifier(tmp_path / "two", num_labels=2), precision="fp32")
    assert encoder.encode(["the cat"]).shape == (1, 16)
    with pytest.raises(EmbedkitError, match="2 output labels"):
        encoder.score(["the cat"], [" sat"])


def test_our_own_reward_model_loads_as_its_encoder(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    RewardModel(encoder, RewardModelObjective(dim=encoder.dim).head).save(tmp_path / "rm")
    loaded = load_reward_model_encoder(tmp_path / "rm", precision="fp32")
    assert isinstance(loaded, Encoder) and loaded.pooling == "mean"  # the pooling its head was trained on
    np.testing.assert_allclose(loaded.encode(TEXTS), encoder.encode(TEXTS), rtol=1e-5, atol=1e-6)
    assert load_reward_model_encoder(tmp_path / "rm", pooling="cls").pooling == "cls"


def test_bad_names_are_clear_errors(tmp_path) -> None:
    with pytest.raises(EmbedkitError, match="model folder not found"):
        load_reward_model_encoder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbedkitError, match="empty holds no reward head"):
        load_reward_model_encoder(tmp_path / "empty")
    with pytest.raises(ConfigError, match="pooling"):
        load_reward_model_encoder(tmp_path / "missing", pooling="max")
