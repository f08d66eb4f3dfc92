"""Matryoshka Representation Learning (Kusupati et al., 2022): one loss at several leading-dimension cuts.

With dimensions ``d_1 > ... > d_m`` and weights ``w_k`` (default 1), the wrapped loss ``L`` is computed on the
batch's embeddings cut to their first ``d_k`` columns, and the weighted losses are summed:

    loss = sum_k w_k * L(anchors[:, :d_k], candidates[:, :d_k])

as sentence-transformers' ``MatryoshkaLoss`` does. The embeddings are computed once; each cut is scored by the
wrapped loss itself, and every InfoNCE-family loss (and CoSENT) scores by cosine similarity, which normalises
each cut again. Filter steps run on each cut's own score table; under ``torchrun`` the cut applies to the
gathered candidates (and anchor pool), so gathered and single-process losses agree as for the loss alone; with
gradient caching the loss sees the cached full-size embeddings and cuts them, so gradients equal a plain step.

:func:`matryoshka` puts the cut where it belongs: around an embedding loss; inside a memory queue (around the
loss the queue extends, so past positives are kept whole and cut with the batch, and enqueued once per step);
and around GISTEmbed's loss of the model's embeddings (the frozen guide's embeddings, which only choose false
negatives, are kept whole). Other objectives (DCLR, DiffCSE, reward-bt) compute more than a loss of the
embeddings, and are refused.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor, nn

from embedkit.encoders.batching import embed_batch
from embedkit.errors import ConfigError
from embedkit.losses.gist import GISTEmbedObjective
from embedkit.losses.objective import Objective
from embedkit.losses.queue import MemoryQueue, MomentumQueueObjective
from embedkit.types import EmbeddedBatch, TextBatch

if TYPE_CHECKING:
    from embedkit.encoders import Encoder


def check_dims(dims: Sequence[int]) -> tuple[int, ...]:
    """``dims`` as a tuple when they are distinct positive integers, at least one.

    Raises:
        ConfigError: an empty list, a value that is not a positive integer, or one given twice.
    """
    if isinstance(dims, str) or not isinstance(dims, Sequence):
        raise ConfigError(f"matryoshka_dims must be a list of dimensions such as [384, 128, 32], got {dims!r}")
    if not dims:
        raise ConfigError("matryoshka_dims must name at least one dimension")
    bad = [d for d in dims if isinstance(d, bool) or not isinstance(d, int) or d < 1]
    if bad:
        raise ConfigError(f"matryoshka_dims must be positive integers, got {bad[0]!r}")
    repeated = sorted({d for d in dims if list(dims).count(d) > 1})
    if repeated:
        raise ConfigError(f"matryoshka_dims names {repeated[0]} more than once; give it a larger weight instead")
    return tuple(dims)


def check_weights(weights: Sequence[float]) -> tuple[float, ...]:
    """``weights`` as a tuple of floats when they are numbers above 0, at least one.

    Raises:
        ConfigError: an empty list, or a weight that is not a number above 0.
    """
    if isinstance(weights, str) or not isinstance(weights, Sequence):
        raise ConfigError(f"matryoshka_weights must be a list of numbers, got {weights!r}")
    if not weights:
        raise ConfigError("matryoshka_weights must give at least one weight")
    bad = [w for w in weights if isinstance(w, bool) or not isinstance(w, int | float) or not w > 0]
    if bad:
        raise ConfigError(f"matryoshka_weights must be numbers above 0, got {bad[0]!r}")
    return tuple(float(w) for w in weights)


def weights_for(dims: Sequence[int], weights: Sequence[float] | None) -> tuple[float, ...]:
    """One weight per dimension: ``weights`` checked, or 1 each when ``None``.

    Raises:
        ConfigError: an invalid weight, or another count of weights than of dimensions.
    """
    if weights is None:
        return (1.0,) * len(dims)
    checked = check_weights(weights)
    if len(checked) != len(dims):
        raise ConfigError(
            f"matryoshka_weights gives {len(checked)} weight{'' if len(checked) == 1 else 's'} for {len(dims)} "
            "matryoshka_dims; give one per dimension"
        )
    return checked


def truncated_batch(batch: EmbeddedBatch, dim: int) -> EmbeddedBatch:
    """``batch`` with anchors, candidates and the anchor pool cut to their first ``dim`` columns (views: gradients
    flow back into the whole embeddings)."""
    width = batch.anchors.shape[-1]
    if dim > width:
        raise ConfigError(f"matryoshka_dims {dim} exceeds the {width} dimensions of the model's embeddings")
    pool = None if batch.anchor_pool is None else batch.anchor_pool[:, :dim]
    return dataclasses.replace(
        batch, anchors=batch.anchors[:, :dim], candidates=batch.candidates[:, :dim], anchor_pool=pool
    )


class _Cuts:
    """The dimensions and weights of a Matryoshka loss, and their weighted sum."""

    def __init__(self, dims: Sequence[int], weights: Sequence[float] | None) -> None:
        self.dims = check_dims(dims)
        self.weights = weights_for(self.dims, weights)

    def total(self, batch: EmbeddedBatch, loss: Callable[[EmbeddedBatch], Tensor]) -> Tensor:
        """``sum_k w_k * loss(batch cut to d_k)``, the largest cut first."""
        pairs = sorted(zip(self.dims, self.weights, strict=True), reverse=True)
        return sum(weight * loss(truncated_batch(batch, dim)) for dim, weight in pairs)  # type: ignore[return-value]

    def describe(self) -> str:
        return f"dims={list(self.dims)}, weights={list(self.weights)}"


class MatryoshkaLoss(nn.Module):
    """An embedding loss summed over leading-dimension cuts of the embeddings (see the module doc).

    Input: an :class:`~embedkit.types.EmbeddedBatch` with anchors ``[B, D]`` and candidates ``[C, D]``, ``D`` at
    least the largest dimension. Output: a scalar, ``sum_k w_k * loss(cut to d_k)``.

    Args:
        loss: an embedding loss (``EmbeddedBatch -> scalar``): InfoNCE, SimCSE, debiased InfoNCE, CoSENT, ...
        dims: the cuts, distinct positive integers (sentence-transformers' ``matryoshka_dims``).
        weights: one weight per cut, above 0; default 1 each (``matryoshka_weights``).

    Example:
        >>> loss = MatryoshkaLoss(InfoNCELoss(temperature=0.05), dims=[384, 256, 128, 64, 32])
        >>> value = loss(embedded_batch)  # the InfoNCE of each cut, summed

    Reference: Kusupati et al., 2022, "Matryoshka Representation Learning", NeurIPS.
    """

    def __init__(self, loss: nn.Module, dims: Sequence[int], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if isinstance(loss, Objective):
            raise ConfigError(
                f"MatryoshkaLoss wraps a loss of embeddings, not the objective {type(loss).__name__}; use matryoshka()"
            )
        self.loss = loss
        self.cuts = _Cuts(dims, weights)

    @property
    def dims(self) -> tuple[int, ...]:
        return self.cuts.dims

    @property
    def weights(self) -> tuple[float, ...]:
        return self.cuts.weights

    def forward(self, batch: EmbeddedBatch) -> Tensor:
        return self.cuts.total(batch, self.loss)

    def extra_repr(self) -> str:
        return self.cuts.describe()


class MatryoshkaGISTObjective(Objective):
    """GISTEmbed at several leading-dimension cuts of the trained model's embeddings.

    The model and the guide embed the batch once; for each cut ``d_k`` the model's embeddings are cut and
    :meth:`~embedkit.losses.gist.GISTEmbedObjective.guided_loss` scores them, the guide's whole embeddings choosing
    the false negatives (as sentence-transformers' ``MatryoshkaLoss`` over ``GISTEmbedLoss``, which cuts the
    trained model's output only). Output: ``sum_k w_k * GIST(cut to d_k)``.

    Args:
        objective: the GISTEmbed objective.
        dims: the cuts.
        weights: one weight per cut; default 1 each.
    """

    def __init__(
        self, objective: GISTEmbedObjective, dims: Sequence[int], weights: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.objective = objective
        self.cuts = _Cuts(dims, weights)

    @property
    def dims(self) -> tuple[int, ...]:
        return self.cuts.dims

    @property
    def weights(self) -> tuple[float, ...]:
        return self.cuts.weights

    def setup(self, encoder: Encoder) -> None:
        self.objective.setup(encoder)

    def eval_options(self) -> dict[str, dict[str, object]]:
        return self.objective.eval_options()

    def save_heads(self, path: str | os.PathLike[str]) -> Path | None:
        return self.objective.save_heads(path)

    def guided_loss(self, embedded: EmbeddedBatch, guided: EmbeddedBatch) -> Tensor:
        """``sum_k w_k * GIST(embedded cut to d_k, guided)``: the model's embeddings cut, the guide's kept whole."""
        return self.cuts.total(embedded, lambda cut: self.objective.guided_loss(cut, guided))

    def forward(self, encoder: Encoder, batch: TextBatch) -> Tensor:
        return self.guided_loss(embed_batch(encoder, batch), self.objective.guide_embeddings(batch))

    def extra_repr(self) -> str:
        return self.cuts.describe()


def matryoshka(loss: nn.Module, dims: Sequence[int], weights: Sequence[float] | None = None) -> nn.Module:
    """``loss`` trained at the leading-dimension cuts ``dims`` (weights ``weights``, default 1 each).

    An embedding loss is wrapped in :class:`MatryoshkaLoss`; a memory queue (``infonce-queue``, with or without a
    momentum encoder) gets a new queue around the cut loss; GISTEmbed becomes :class:`MatryoshkaGISTObjective`.

    Raises:
        ConfigError: ``loss`` is an objective that computes more than a loss of the embeddings (DCLR, DiffCSE,
            reward-bt), or the dimensions or weights are invalid.

    Example:
        >>> loss = matryoshka(build_loss("infonce", temperature=0.05), dims=[384, 256, 128, 64, 32])
    """
    if isinstance(loss, MemoryQueue):
        return MemoryQueue(MatryoshkaLoss(loss.loss, dims, weights), loss.size)
    if isinstance(loss, MomentumQueueObjective):
        queue = MemoryQueue(MatryoshkaLoss(loss.queue.loss, dims, weights), loss.queue.size)
        return MomentumQueueObjective(queue, loss.momentum)
    if isinstance(loss, GISTEmbedObjective):
        return MatryoshkaGISTObjective(loss, dims, weights)
    if isinstance(loss, Objective):
        raise ConfigError(
            f"matryoshka_dims needs a loss of the embeddings alone (infonce, simcse-unsup, simcse-sup, "
            f"debiased-infonce, cosent, infonce-queue, gist); {type(loss).__name__} needs more of the model"
        )
    return MatryoshkaLoss(loss, dims, weights)
