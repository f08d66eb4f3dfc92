"""Packed (unpadded) forward passes: the layout's round trips, attention within each text, and an encoder whose
packed embeddings and gradients are the padded forward's."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import TINY_TEXTS
from torch import nn

from embedkit.encoders import load_encoder
from embedkit.encoders.dropout import attention
from embedkit.encoders.packing import PACKED, PackedLayout
from embedkit.encoders.sentence_transformer import packed_transformer

MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])  # three texts of 3, 4 and 1 tokens


def test_the_layout_packs_the_real_tokens_in_order_and_unpacks_with_zeros_at_padding() -> None:
    layout = PackedLayout.of(MASK)
    padded = torch.arange(3 * 4 * 2, dtype=torch.float32).view(3, 4, 2)
    packed = layout.pack(padded)
    assert packed.shape == (8, 2)
    torch.testing.assert_close(packed, padded[MASK.bool()])
    assert torch.equal(layout.unpack(packed), padded * MASK[..., None])
    assert layout.positions().tolist() == [0, 1, 2, 0, 1, 2, 3, 0]


def test_heads_go_from_one_packed_row_to_the_padded_batch_and_back() -> None:
    layout = PackedLayout.of(MASK)
    packed = torch.randn(1, 2, 8, 5)  # [1, H, N, D]
    padded = layout.pad_heads(packed)
    assert padded.shape == (3, 2, 4, 5)
    assert torch.equal(padded[0, :, 3], torch.zeros(2, 5))  # padding
    assert torch.equal(padded[1, :, 2], packed[0, :, 5])  # the second text's third token is the sixth packed
    assert torch.equal(layout.pack_heads(padded.transpose(1, 2)), packed.transpose(1, 2))
    assert layout.key_mask().shape == (3, 1, 1, 4)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_packed_attention_attends_within_each_text(dropout: float) -> None:
    """Against each text's attention computed alone, on its own tokens: softmax(q k^T * scale) v, and with dropout
    the padded batch's attention under the key mask with the same seed (the masks are drawn on the padded shape)."""
    layout = PackedLayout.of(MASK)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 4, generator=generator) for _ in range(3))
    module = nn.Module()
    torch.manual_seed(5)
    out, weights = attention(module, q, k, v, None, dropout=dropout, scaling=0.5, **{PACKED: layout})
    assert weights is None and out.shape == (1, 8, 2, 4)
    if dropout == 0.0:
        start = 0
        for length in MASK.sum(1).tolist():
            span = slice(start, start + length)
            alone = (q[0, :, span] @ k[0, :, span].transpose(-1, -2) * 0.5).softmax(-1) @ v[0, :, span]
            torch.testing.assert_close(out[0, span], alone.transpose(0, 1))
            start += length
    else:
        torch.manual_seed(5)
        padded, _ = attention(
            module, *(layout.pad_heads(x) for x in (q, k, v)), layout.key_mask(), dropout=dropout, scaling=0.5
        )
        torch.testing.assert_close(out, layout.pack_heads(padded))


def _padded_embeddings(encoder, texts: list[str]) -> torch.Tensor:
    return encoder.model(encoder.tokenize(texts))["sentence_embedding"]


def test_an_encoder_forward_runs_packed_with_the_padded_embeddings_and_gradients(tiny_model_path, monkeypatch) -> None:
    encoder = load_encoder(tiny_model_path, device="cpu", precision="fp32")
    encoder.eval()  # no dropout: both forwards are deterministic
    transformer = packed_transformer(encoder.model)
    assert transformer is not None
    lengths = encoder.tokenize(TINY_TEXTS)["attention_mask"].sum(1)
    assert lengths.min() < lengths.max()  # the batch pads
    shapes: list[tuple[int, ...]] = []
    monkeypatch.setattr(transformer, "forward", _recording(transformer.forward, shapes))
    packed = encoder(TINY_TEXTS)
    assert shapes == [(1, int(lengths.sum()))]
    packed_gradients = torch.autograd.grad(packed.pow(2).sum(), list(encoder.parameters()), allow_unused=True)
    padded = _padded_embeddings(encoder, TINY_TEXTS)
    assert shapes[-1] == (len(TINY_TEXTS), int(lengths.max()))
    torch.testing.assert_close(packed, padded)
    padded_gradients = torch.autograd.grad(padded.pow(2).sum(), list(encoder.parameters()), allow_unused=True)
    for ours, reference in zip(packed_gradients, padded_gradients, strict=True):
        assert (ours is None) == (reference is None)
        if ours is not None:
            torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)


def _recording(forward: Callable[..., object], shapes: list[tuple[int, ...]]) -> Callable[..., object]:
    """``forward``, recording the shape of the input ids of every call."""

    def recorded(*args: object, **kwargs: torch.Tensor) -> object:
        shapes.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    return recorded


@pytest.mark.parametrize("change", ["eager attention", "decoder", "hidden states"])
def test_models_it_cannot_pack_run_padded(tiny_model_path, monkeypatch, change: str) -> None:
    encoder = load_encoder(tiny_model_path, device="cpu", precision="fp32")
    encoder.eval()
    transformer = encoder.model[0].auto_model
    shapes: list[tuple[int, ...]] = []
    monkeypatch.setattr(transformer, "forward", _recording(transformer.forward, shapes))
    if change == "eager attention":
        transformer.set_attn_implementation("eager")
    elif change == "decoder":
        transformer.config.is_decoder = True
    else:
        transformer.config.output_hidden_states = True
    assert packed_transformer(encoder.model) is None
    ours = encoder(TINY_TEXTS)
    padded_shape = tuple(encoder.tokenize(TINY_TEXTS)["input_ids"].shape)
    assert shapes == [padded_shape]  # the forward ran the padded batch
    torch.testing.assert_close(ours, _padded_embeddings(encoder, TINY_TEXTS))
