"""FastDropout and the attention with its masks: the distribution of nn.Dropout, the same eval model, seeded."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_TEXTS
from sentence_transformers import SentenceTransformer
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from embedkit.encoders import load_encoder
from embedkit.encoders.dropout import (
    ATTENTION,
    LEVELS,
    FastDropout,
    attention,
    drop_count,
    fast_dropout,
    keep_mask,
    use_fast_dropout,
)

N = 1_000_000


def test_the_drop_probability_is_rounded_to_a_multiple_of_1_over_65536() -> None:
    assert drop_count(0.1) == 6554
    assert drop_count(0.5) == LEVELS // 2
    assert drop_count(0.0) == 0 and drop_count(1.0) == LEVELS


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_masks_keep_each_element_with_the_rounded_keep_probability(p: float) -> None:
    torch.manual_seed(0)
    kept = keep_mask(torch.Size([N]), p).double()
    expected = 1 - drop_count(p) / LEVELS
    # five standard errors of a binomial proportion
    assert kept.mean().item() == pytest.approx(expected, abs=5 * math.sqrt(expected * (1 - expected) / N))
    # neighbours share one 64-bit draw: their decisions must still be uncorrelated
    centred = kept - kept.mean()
    assert (centred[:-1] * centred[1:]).mean().item() / centred.var().item() == pytest.approx(0.0, abs=5 / math.sqrt(N))


def test_masks_come_from_torchs_generator() -> None:
    torch.manual_seed(3)
    first, second = keep_mask(torch.Size([64, 7]), 0.1), keep_mask(torch.Size([64, 7]), 0.1)
    torch.manual_seed(3)
    assert torch.equal(keep_mask(torch.Size([64, 7]), 0.1), first)
    assert not torch.equal(first, second)
    assert first.shape == (64, 7) and first.dtype == torch.bool


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_the_expectation_and_has_dropouts_variance(dtype: torch.dtype) -> None:
    """Closed forms: each output is 0 or 1 / (1 - q) (rounded to the dtype); for inputs of 1, mean 1 and variance
    q / (1 - q), which torch's own dropout has too."""
    p = 0.1
    q = drop_count(p) / LEVELS
    scale = torch.tensor(1 / (1 - q), dtype=dtype).item()
    torch.manual_seed(1)
    out = fast_dropout(torch.ones(N, dtype=dtype), p).double()
    assert out.unique().tolist() == [0.0, scale]
    variance = q / (1 - q)
    assert out.mean().item() == pytest.approx((1 - q) * scale, abs=5 * math.sqrt(variance / N))
    assert out.var().item() == pytest.approx(variance, rel=0.02)
    torch.manual_seed(1)
    assert F.dropout(torch.ones(N, dtype=torch.float64), p).var().item() == pytest.approx(variance, rel=0.02)


def test_the_gradient_passes_through_kept_elements_only() -> None:
    x = torch.randn(32, 16, requires_grad=True)
    torch.manual_seed(2)
    out = fast_dropout(x, 0.3)
    out.backward(torch.ones_like(out))
    torch.manual_seed(2)
    kept = keep_mask(x.shape, 0.3)
    scale = 1 / (1 - drop_count(0.3) / LEVELS)
    assert torch.equal(out, torch.where(kept, x.detach() * scale, 0.0))
    assert torch.equal(x.grad, kept.float() * scale)


def test_the_layer_is_nn_dropout_where_it_does_not_apply() -> None:
    x = torch.randn(8, 4)
    layer = FastDropout(0.1)
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    assert torch.equal(FastDropout(0.0)(x), x)
    assert torch.equal(FastDropout(1.0)(x), torch.zeros_like(x))
    torch.manual_seed(5)
    fast = layer(x)
    torch.manual_seed(5)
    assert torch.equal(fast, fast_dropout(x, 0.1))


def _qkv(seed: int, heads: int = 2, length: int = 5, dim: int = 4) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(3, heads, length, dim, generator=generator) for _ in range(3))


class _Module(nn.Module):
    is_causal = False


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_attention_drops_the_probabilities_with_the_fast_masks(mask_kind: str) -> None:
    """Against attention written out: softmax(q k^T / sqrt(d) + mask), the same mask's dropout, times v."""
    q, k, v = _qkv(0)
    padding = torch.ones(3, 1, 5, 5, dtype=torch.bool)
    padding[1, ..., 3:] = False  # the second row's last two tokens are padding
    mask = {"none": None, "bool": padding, "additive": torch.zeros(3, 1, 5, 5).masked_fill(~padding, -1e9)}[mask_kind]
    torch.manual_seed(7)
    out, weights = attention(_Module(), q, k, v, mask, dropout=0.25, scaling=0.5)
    torch.manual_seed(7)
    kept = keep_mask(torch.Size([3, 2, 5, 5]), 0.25)
    scores = q @ k.transpose(-1, -2) * 0.5
    if mask is not None:
        scores = scores.masked_fill(~padding, float("-inf"))
    probabilities = torch.where(kept, scores.softmax(-1), 0.0) / (1 - drop_count(0.25) / LEVELS)
    torch.testing.assert_close(out, (probabilities @ v).transpose(1, 2))
    assert weights is None and out.shape == (3, 5, 2, 4)


def test_attention_is_transformers_sdpa_without_dropout_and_for_causal_modules() -> None:
    q, k, v = _qkv(1)
    assert torch.equal(attention(_Module(), q, k, v, None)[0], sdpa_attention_forward(_Module(), q, k, v, None)[0])
    causal = _Module()
    causal.is_causal = True
    torch.manual_seed(4)
    ours = attention(causal, q, k, v, None, dropout=0.5)[0]
    torch.manual_seed(4)
    assert torch.equal(ours, sdpa_attention_forward(causal, q, k, v, None, dropout=0.5)[0])


def test_a_model_gets_fast_dropout_and_attention_and_keeps_its_eval_embeddings(tiny_model_path, tmp_path) -> None:
    reference = SentenceTransformer(str(tiny_model_path), device="cpu")
    expected = reference.encode(TINY_TEXTS, convert_to_tensor=True)
    encoder = load_encoder(tiny_model_path, device="cpu", precision="fp32")  # switched when the Encoder is made
    model = encoder.model
    assert not any(type(module) is nn.Dropout for module in model.modules())
    assert sum(isinstance(module, FastDropout) for module in model.modules()) > 0
    assert model[0].auto_model.config._attn_implementation == ATTENTION
    assert use_fast_dropout(model) == 0  # nothing left to switch
    torch.testing.assert_close(torch.from_numpy(encoder.encode(TINY_TEXTS)), expected)
    encoder.save(tmp_path / "saved")
    assert ATTENTION not in (tmp_path / "saved" / "config.json").read_text()
    assert torch.equal(SentenceTransformer(str(tmp_path / "saved")).encode(TINY_TEXTS, convert_to_tensor=True), expected)


def test_training_forwards_are_seeded_and_differ_between_draws(tiny_model_path) -> None:
    encoder = load_encoder(tiny_model_path, device="cpu", precision="fp32")
    encoder.train()
    torch.manual_seed(9)
    first, second = encoder(TINY_TEXTS), encoder(TINY_TEXTS)
    torch.manual_seed(9)
    assert torch.equal(encoder(TINY_TEXTS), first)
    assert not torch.equal(first, second)  # SimCSE's two views of one text
