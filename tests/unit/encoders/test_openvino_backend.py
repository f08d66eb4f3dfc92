"""The OpenVINO backend gives the torch fp32 path's embeddings: exactly in fp32, within a stated bound in bf16 and
int8; conversions are cached; the option is validated; an index built with one backend is searched with another.

Tolerances, as cosine between the backend's and torch fp32's embedding of each text: fp32 >= 0.99999 (the same
arithmetic up to operation order), bf16 >= 0.999 (8-bit mantissa activations, as the torch bf16 autocast path),
int8 >= 0.99 on the real model (post-training quantization calibrated on a handful of texts).
"""

from __future__ import annotations

import copy
import logging
import sys

import numpy as np
import pytest
import torch

from embedkit.encoders import DEFAULT_MODEL, load_encoder
from embedkit.errors import ConfigError, MissingDependencyError

pytest.importorskip("openvino")

from embedkit.encoders import openvino_backend

TEXTS = ["the cat sat on the mat", "a dog", "the sun rises in the east over the green hills", "rain", "the train"]
REAL_TEXTS = [
    "A man is playing a guitar.",
    "Someone plays music on a stage.",
    "The stock market fell sharply on Monday.",
    "Children build a sandcastle at the beach.",
    "How do boundary layers behave at high speed?",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """One cache folder for the whole session, so that each model is converted once."""
    folder = tmp_path_factory.getbasetemp() / "embedkit-cache"
    monkeypatch.setenv("EMBEDKIT_CACHE", str(folder))
    return folder


def test_fp32_gives_the_torch_embeddings_in_input_order(tiny_model_path) -> None:
    reference = load_encoder(tiny_model_path, precision="fp32", backend="torch").encode(TEXTS)
    encoder = load_encoder(tiny_model_path, precision="fp32", backend="openvino")
    assert encoder.backend == "openvino"
    embeddings = encoder.encode(TEXTS, batch_size=2)
    assert embeddings.dtype == np.float32 and embeddings.shape == reference.shape
    assert cosines(embeddings, reference).min() >= 0.99999
    np.testing.assert_allclose(embeddings, reference, atol=1e-5)
    normalized = encoder.encode(TEXTS, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, rtol=1e-5)
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_a_failing_batch_stream_raises_and_leaves_the_runner_usable(tiny_model_path) -> None:
    reference = load_encoder(tiny_model_path, precision="fp32", backend="torch").encode(TEXTS)
    encoder = load_encoder(tiny_model_path, precision="fp32", backend="openvino")
    out = np.zeros((len(TEXTS), encoder.dim), np.float32)

    def batches():
        for start in range(0, 4, 2):  # two batches in flight when the third fails to tokenize
            yield list(range(start, start + 2)), encoder.model.preprocess(TEXTS[start : start + 2])
        raise RuntimeError("tokenizer failed")

    with pytest.raises(RuntimeError, match="tokenizer failed"):
        list(encoder.runner.embed_into(encoder.model, batches(), torch.float32, out))
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=2), reference, atol=1e-5)


def test_bf16_is_within_the_stated_bound(tiny_model_path) -> None:
    reference = load_encoder(tiny_model_path, precision="fp32", backend="torch").encode(TEXTS)
    embeddings = load_encoder(tiny_model_path, precision="bf16", backend="openvino").encode(TEXTS)
    assert cosines(embeddings, reference).min() >= 0.999


def test_conversion_is_cached_and_redone_when_the_weights_change(tiny_model_path, cache, monkeypatch) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32", backend="openvino")
    encoder.encode(TEXTS)
    converted = sorted((cache / "openvino").glob("*/model.xml"))

    def fail(model):
        raise AssertionError("converted again although the cache holds the model")

    with monkeypatch.context() as patch:
        patch.setattr(openvino_backend, "convert", fail)
        again = load_encoder(tiny_model_path, precision="fp32", backend="openvino")
        np.testing.assert_array_equal(again.encode(TEXTS), encoder.encode(TEXTS))

    with torch.no_grad():  # what an optimizer step does: the weights change in place
        next(encoder.model.parameters()).mul_(1.5)
    trained = encoder.encode(TEXTS)
    assert len(sorted((cache / "openvino").glob("*/model.xml"))) == len(converted) + 1
    encoder.runner = None
    np.testing.assert_allclose(trained, encoder.encode(TEXTS), atol=1e-5)


def test_a_copied_encoder_compiles_its_own(tiny_model_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32", backend="openvino")
    expected = encoder.encode(TEXTS)
    copied = copy.deepcopy(encoder)
    assert copied.runner is not encoder.runner and copied.backend == "openvino"
    np.testing.assert_array_equal(copied.encode(TEXTS), expected)


def test_the_backend_option_is_validated(tiny_model_path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"^unknown backend 'onnx'; valid: auto, torch, openvino, openvino-int8$"):
        load_encoder(tiny_model_path, backend="onnx")
    with pytest.raises(ConfigError, match=r"^the openvino backend runs on the CPU, not cuda; use backend torch there$"):
        load_encoder(tiny_model_path, backend="openvino", device="cuda")
    with pytest.raises(ConfigError, match=r"runs in fp32 or bf16, not float16"):
        encoder = load_encoder(tiny_model_path, backend="openvino", device="cpu")
        list(encoder.runner.embed_into(encoder.model, [], torch.float16, np.empty((0, encoder.dim), np.float32)))
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'embedkit\[openvino\]'"):
        load_encoder(tiny_model_path, backend="openvino")


def test_auto_takes_openvino_on_the_cpu_where_it_is_installed(monkeypatch) -> None:
    choose = openvino_backend.automatic_backend
    assert (choose("cpu"), choose(torch.device("cpu")), choose("cuda:1")) == ("openvino", "openvino", "torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (choose(None), choose("cpu")) == ("torch", "openvino")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose(None) == "openvino"
    monkeypatch.setitem(sys.modules, "openvino", None)  # a plain install: no openvino extra
    assert choose("cpu") == "torch"


def test_load_encoder_defaults_to_auto_or_embedkit_backend(tiny_model_path, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMBEDKIT_BACKEND", "openvino-int8")
    with pytest.raises(ConfigError, match=r"holds no int8 model"):  # the variable names the backend
        load_encoder(tiny_model_path)
    monkeypatch.setenv("EMBEDKIT_BACKEND", "onnx")
    with pytest.raises(ConfigError, match=r"^unknown backend 'onnx' in \$EMBEDKIT_BACKEND; valid: auto, torch,"):
        load_encoder(tiny_model_path)
    assert load_encoder(tiny_model_path, backend="torch").backend == "torch"  # an argument wins
    monkeypatch.delenv("EMBEDKIT_BACKEND")
    assert load_encoder(tiny_model_path, device="cpu").backend == "openvino"
    # a model that pools without its prompt tokens, which OpenVINO's compiled model would pool
    encoder = load_encoder(tiny_model_path, backend="torch")
    encoder.model[1].include_prompt = False
    encoder.save(tmp_path / "no-prompt-pooling")
    assert load_encoder(tmp_path / "no-prompt-pooling", device="cpu").backend == "torch"
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert load_encoder(tiny_model_path, device="cpu").backend == "torch"  # no MissingDependencyError


def test_auto_encodes_in_torch_a_model_openvino_cannot_convert(tiny_model_path, tmp_path, monkeypatch,
                                                                 caplog) -> None:
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path))  # nothing converted yet
    reference = load_encoder(tiny_model_path, precision="fp32", backend="torch").encode(TEXTS)

    def fail(model):
        raise RuntimeError("unsupported operator aten::foo\nat line 3")

    monkeypatch.setattr(openvino_backend, "convert", fail)
    encoder = load_encoder(tiny_model_path, precision="fp32", backend="auto")
    assert encoder.backend == "openvino"
    with caplog.at_level(logging.WARNING, logger=openvino_backend.__name__):
        np.testing.assert_array_equal(encoder.encode(TEXTS), reference)
    assert "OpenVINO cannot run this model (unsupported operator aten::foo); encoding it in torch" in caplog.text
    assert encoder.backend == "torch" and not list(tmp_path.rglob("*.xml")) and not list(tmp_path.rglob("*.tmp*"))
    chosen = load_encoder(tiny_model_path, precision="fp32", backend="openvino")  # asked for: no fallback
    with pytest.raises(RuntimeError, match="unsupported operator"):
        chosen.encode(TEXTS)


def test_int8_needs_a_quantized_model_of_the_same_weights(tiny_model_path, tmp_path) -> None:
    pytest.importorskip("nncf")
    with pytest.raises(ConfigError, match=r"holds no int8 model; write one with: embedkit quantize"):
        load_encoder(tiny_model_path, backend="openvino-int8")
    encoder = load_encoder(tiny_model_path, precision="fp32", backend="torch")
    folder = tmp_path / "model"
    encoder.save(folder)
    openvino_backend.quantize(encoder.model, TEXTS * 4, folder)
    int8 = load_encoder(folder, precision="fp32", backend="openvino-int8")
    assert int8.backend == "openvino-int8"
    assert cosines(int8.encode(TEXTS), encoder.encode(TEXTS)).min() >= 0.95  # a random 2-layer model
    with torch.no_grad():
        next(int8.model.parameters()).mul_(1.5)
    with pytest.raises(ConfigError, match=r"was quantized from other weights than the model's; quantize it again"):
        int8.encode(TEXTS)


def test_an_index_built_with_openvino_is_searched_with_torch(tiny_model_path, tmp_path) -> None:
    from embedkit.index import Index, build_index

    corpus = [(f"d{i}", text) for i, text in enumerate(TEXTS)]
    built = build_index(load_encoder(tiny_model_path, precision="fp32", backend="openvino"), corpus, spec="torch")
    built.save(tmp_path / "index")
    index = Index.load(tmp_path / "index", encoder=load_encoder(tiny_model_path, precision="fp32", backend="torch"))
    scores, ids = index.search(TEXTS, k=1)
    assert ids[:, 0].tolist() == [doc_id for doc_id, _ in corpus]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


@pytest.mark.slow
def test_the_real_model_in_fp32_bf16_and_int8(tmp_path) -> None:
    reference = load_encoder(DEFAULT_MODEL, precision="fp32", device="cpu", backend="torch")
    expected = reference.encode(REAL_TEXTS)
    fp32 = load_encoder(DEFAULT_MODEL, precision="fp32", backend="openvino").encode(REAL_TEXTS)
    assert cosines(fp32, expected).min() >= 0.99999
    bf16 = load_encoder(DEFAULT_MODEL, precision="bf16", backend="openvino").encode(REAL_TEXTS)
    assert cosines(bf16, expected).min() >= 0.999
    pytest.importorskip("nncf")
    reference.save(tmp_path / "model")
    openvino_backend.quantize(reference.model, REAL_TEXTS * 8, tmp_path / "model")
    int8 = load_encoder(tmp_path / "model", precision="fp32", backend="openvino-int8").encode(REAL_TEXTS)
    assert cosines(int8, expected).min() >= 0.99
