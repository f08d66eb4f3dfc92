"""Gradient caching gives the loss and gradients of the full batch."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_TEXTS

from embedkit.data import collate
from embedkit.encoders import build_tiny_model, load_encoder
from embedkit.encoders.batching import embed_batch
from embedkit.errors import ConfigError
from embedkit.losses import Objective, build_loss, matryoshka
from embedkit.training.fit import FitSettings, fit
from embedkit.training.gradcache import grad_cache_backward
from embedkit.types import Example, Kind


def grads(encoder) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("nodrop") / "m", TINY_TEXTS, seed=3, dropout=0.0)


@pytest.mark.parametrize("mini_batch_size", [1, 3, 5, 100])
@pytest.mark.parametrize("loss", [
    build_loss("infonce", temperature=0.1),
    matryoshka(build_loss("infonce", temperature=0.1, filters=[{"name": "top-k", "k": 3}]), [32, 8, 2], [1, 2, 0.5]),
], ids=["infonce", "matryoshka"])
def test_same_loss_and_gradients_as_full_batch(no_dropout_model, mini_batch_size: int, loss) -> None:
    rows = [Example(anchor=a, positive=b, negatives=(c,)) for a, b, c in zip(TINY_TEXTS, TINY_TEXTS[1:], TINY_TEXTS[2:])]
    batch = collate(rows, Kind.TRIPLETS)

    full = load_encoder(no_dropout_model, precision="fp32")
    full.train()
    expected = loss(embed_batch(full, batch))
    expected.backward()

    cached = load_encoder(no_dropout_model, precision="fp32")
    cached.train()
    value = grad_cache_backward(cached, loss, batch, mini_batch_size, torch.float32)

    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    want, got = grads(full), grads(cached)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_dropout_masks_replay_in_the_recompute(tiny_model_path) -> None:
    """With dropout on, the gradient pass must see the embeddings the loss saw: replaying the RNG makes the
    cached run deterministic and equal to itself under the same seed."""
    batch = collate([Example(anchor=t, positive=t) for t in TINY_TEXTS], Kind.SENTENCES)
    loss = build_loss("simcse-unsup")
    results = []
    for _ in range(2):
        encoder = load_encoder(tiny_model_path, precision="fp32")
        encoder.train()
        torch.manual_seed(0)
        value = grad_cache_backward(encoder, loss, batch, 4, torch.float32)
        results.append((value, grads(encoder)))
    assert results[0][0] == results[1][0]
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=0, atol=0)


def test_fit_with_mini_batches_and_objective_refusal(tiny_model_path, tmp_path) -> None:
    examples = [Example(anchor=t, positive=t) for t in TINY_TEXTS]
    settings = FitSettings(output_dir=tmp_path, batch_size=8, max_steps=2, mini_batch_size=4, show_progress=False)
    result = fit(load_encoder(tiny_model_path, precision="fp32"), examples, build_loss("simcse-unsup"), settings,
                 kind="sentences")
    assert result.steps == 2

    class TokenObjective(Objective):
        def forward(self, encoder, batch):
            raise AssertionError("never called")

    with pytest.raises(ConfigError, match="cannot be split into mini-batches"):
        fit(load_encoder(tiny_model_path), examples, TokenObjective(), settings, kind="sentences")
    with pytest.raises(ConfigError, match="at least 1"):
        fit(load_encoder(tiny_model_path), examples, build_loss("simcse-unsup"),
            FitSettings(output_dir=tmp_path, batch_size=8, mini_batch_size=0), kind="sentences")
