"""Gradient caching (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup"): the loss sees the whole batch while the encoder only ever holds one mini-batch of activations.

1. Embed every mini-batch without gradients, remembering the RNG state before each (for dropout).
2. Compute the loss on the detached full-batch embeddings and backpropagate it to the embeddings only.
3. Re-embed each mini-batch with gradients under its remembered RNG state (same dropout masks, same
   embeddings) and backpropagate the cached embedding gradients through the encoder.

Under ``torchrun`` the candidates are gathered from every rank before the loss, as in a plain step. Loss and
gradients equal a full-batch step; memory is that of one mini-batch plus the ``[N, D]`` embeddings.
Objectives that need the tokens of the whole batch at once (:class:`~embedkit.losses.objective.Objective`)
cannot be split this way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from embedkit.encoders import Encoder
from embedkit.encoders.batching import embedded_from
from embedkit.precision import autocast
from embedkit.types import TextBatch


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def grad_cache_backward(
    encoder: Encoder,
    loss: nn.Module,
    batch: TextBatch,
    mini_batch_size: int,
    dtype: torch.dtype,
    scale: Callable[[Tensor], Tensor] = lambda value: value,
) -> Tensor:
    """Accumulate the gradients of ``loss`` over ``batch`` into the encoder (and loss) parameters.

    Args:
        encoder: the model being trained (in train mode).
        loss: an embedding loss, ``EmbeddedBatch -> scalar``.
        batch: the full batch; its ``B + C`` texts are embedded ``mini_batch_size`` at a time.
        mini_batch_size: texts per encoder forward pass.
        dtype: the autocast dtype of the encoder's forward passes.
        scale: applied to the loss before backpropagation (a ``GradScaler``'s ``scale`` for fp16).

    Returns:
        The loss value (detached).
    """
    device = encoder.device
    texts = [*batch.anchors, *batch.candidates]
    chunks = [texts[i : i + mini_batch_size] for i in range(0, len(texts), mini_batch_size)]
    states = []
    with torch.no_grad():
        pieces = []
        for chunk in chunks:
            states.append(_rng_state(device))
            with autocast(dtype, device):
                pieces.append(encoder(chunk).float())
    end_state = _rng_state(device)
    embeddings = torch.cat(pieces).requires_grad_()
    value = loss(embedded_from(embeddings, batch))
    scale(value).backward()
    cached = embeddings.grad.split([len(chunk) for chunk in chunks])
    for chunk, state, grad in zip(chunks, states, cached):
        _set_rng_state(state, device)
        with autocast(dtype, device):
            piece = encoder(chunk)
        piece.float().backward(grad)
    _set_rng_state(end_state, device)
    return value.detach()
