"""A memory queue of past positives as extra negatives (He et al., 2020, MoCo), for small batches.

An InfoNCE-family loss sees ``C`` candidates per step; on a CPU ``C`` is small. :class:`MemoryQueue` keeps the
normalised, detached positives of the last ``size`` training rows in a FIFO ring buffer and appends them to every
batch's candidates, so each anchor is scored against ``C + K`` candidates (``K <= size`` entries filled so
far). The queue also keeps each entry's text id (the stable hash :func:`embedkit.data.collate.text_id` that
the batch's group ids use), so the duplicate-masking step masks a queued copy of the anchor's or positive's
text, and every other filter step sees queue entries like any candidate.

With ``momentum`` (:class:`MomentumQueueObjective`) the queued positives are embedded by an exponential moving
average of the encoder's weights instead of the encoder itself, as in MoCo's key encoder and ESimCSE's
momentum contrast (Wu et al., 2022): entries embedded over many steps then come from nearly the same model.
The in-batch part of the loss is unchanged.

Queue and moving-average weights are buffers, so :func:`embedkit.fit` checkpoints them and a resumed run
continues with the same queue.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedkit import distributed
from embedkit.encoders.batching import embed_batch
from embedkit.errors import ConfigError
from embedkit.losses.infonce import InfoNCELoss
from embedkit.losses.objective import Objective
from embedkit.losses.registry import CONTRASTIVE_KINDS, LOSSES, LossSpec
from embedkit.losses.steps import FilterSpec, loss_steps
from embedkit.types import EmbeddedBatch, TextBatch

if TYPE_CHECKING:
    from embedkit.encoders import Encoder


def positive_columns(batch: EmbeddedBatch) -> Tensor:
    """``[W * B]`` long: the candidate columns holding the positives of every rank, in rank order.

    In one process these are ``0 .. B-1``. Gathered from ``W`` ranks (``anchor_pool`` holds ``W * B``
    anchors), the candidates are ``W`` equal blocks of ``C / W``, each starting with its rank's ``B``
    positives.
    """
    b = batch.batch_size
    world = 1 if batch.anchor_pool is None else batch.anchor_pool.shape[0] // b
    per_rank = batch.candidates.shape[0] // world
    device = batch.candidates.device
    starts = torch.arange(world, device=device)[:, None] * per_rank
    return (starts + torch.arange(b, device=device)[None, :]).reshape(-1)


class MemoryQueue(nn.Module):
    """Wrap an embedding loss so that it also scores anchors against a FIFO queue of past positives.

    Input: an :class:`~embedkit.types.EmbeddedBatch` (anchors ``[B, D]``, candidates ``[C, D]``); the wrapped
    loss receives the same batch with candidates ``[C + K, D]`` and candidate groups ``[C + K]``, the ``K``
    queued entries last (oldest first). Output: the wrapped loss's scalar. Afterwards, in training mode, the
    batch's positives (``[W * B, D]`` when gathered from ``W`` ranks, so that every rank keeps the same
    queue) are normalised, detached and enqueued, replacing the oldest entries once the queue is full.

    Any loss that reads ``EmbeddedBatch.candidates`` works: :class:`~embedkit.losses.infonce.InfoNCELoss`,
    :class:`~embedkit.losses.debiased.DebiasedInfoNCELoss`, ... Its filter steps run over batch and queue
    candidates alike. A symmetric loss's positive-to-anchor direction does not use the queue.

    Args:
        loss: the loss to extend.
        size: the number of past positives kept.

    Example:
        >>> loss = MemoryQueue(InfoNCELoss(temperature=0.05), size=1024)
        >>> value = loss(embedded_batch)  # scores B anchors against C + K candidates, then enqueues B positives

    Reference: He, Fan, Wu, Xie, Girshick, 2020, "Momentum Contrast for Unsupervised Visual Representation
    Learning", CVPR.
    """

    def __init__(self, loss: nn.Module, size: int = 1024) -> None:
        super().__init__()
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"queue_size must be a positive integer, got {size!r}")
        self.loss = loss
        self.size = size
        # The embedding size is known at the first batch; until then the queue is [0, 0].
        self.register_buffer("embeddings", torch.zeros(0, 0))  # [size, D] unit vectors, float32
        self.register_buffer("text_ids", torch.zeros(size, dtype=torch.long))  # [size]
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))  # next slot to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # filled slots
        self.register_load_state_dict_pre_hook(_resize_to_loaded("embeddings"))

    def entries(self) -> tuple[Tensor, Tensor]:
        """The queued ``[K, D]`` embeddings and ``[K]`` text ids, oldest first (copies, not views)."""
        count = int(self.count)
        if count < self.size:
            order = torch.arange(count, device=self.text_ids.device)
        else:
            order = (int(self.pointer) + torch.arange(self.size, device=self.text_ids.device)) % self.size
        return self.embeddings[order], self.text_ids[order]

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor, text_ids: Tensor) -> None:
        """Append ``[n, D]`` embeddings (normalised here) with their ``[n]`` text ids; the oldest leave first."""
        embeddings = F.normalize(embeddings.detach().float(), dim=-1)[-self.size :]
        text_ids = text_ids[-self.size :]
        self._follow(embeddings.device)
        dim = embeddings.shape[1]
        if self.embeddings.numel() == 0:
            self.embeddings = torch.zeros(self.size, dim, device=embeddings.device)
        elif self.embeddings.shape[1] != dim:
            raise ConfigError(f"the queue holds {self.embeddings.shape[1]}-d embeddings, the model now gives {dim}-d")
        n = embeddings.shape[0]
        slots = (self.pointer + torch.arange(n, device=embeddings.device)) % self.size
        self.embeddings[slots] = embeddings
        self.text_ids[slots] = text_ids.to(self.text_ids.device)
        self.pointer.copy_((self.pointer + n) % self.size)
        self.count.copy_((self.count + n).clamp(max=self.size))

    def extend(self, batch: EmbeddedBatch) -> EmbeddedBatch:
        """``batch`` with the queued entries appended to its candidates and candidate groups."""
        if int(self.count) == 0:
            return batch
        self._follow(batch.candidates.device)
        queued, ids = self.entries()
        return dataclasses.replace(
            batch,
            # float32 like every score table; the batch's own candidates may be bf16 under autocast.
            candidates=torch.cat([batch.candidates.float(), queued]),
            candidate_groups=torch.cat([batch.candidate_groups, ids]),
        )

    def forward(self, batch: EmbeddedBatch) -> Tensor:
        value = self.loss(self.extend(batch))
        if self.training:
            columns = positive_columns(batch)
            self.enqueue(batch.candidates[columns], batch.candidate_groups[columns])
        return value

    def _follow(self, device: torch.device) -> None:
        """Keep the buffers where the embeddings are (fit() does not move losses; a resume loads to the CPU)."""
        if self.text_ids.device != device:
            self.to(device)

    def extra_repr(self) -> str:
        return f"size={self.size}, filled={int(self.count)}"


def _resize_to_loaded(*names: str) -> Any:
    """A load-state-dict pre-hook giving lazily sized buffers the shape of the state being loaded.

    A checkpoint is loaded before the first batch, while such a buffer still has its placeholder shape.
    """

    def hook(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        for name in names:
            loaded = state_dict.get(prefix + name)
            current = getattr(module, name)
            if loaded is not None and loaded.shape != current.shape:
                setattr(module, name, torch.empty(loaded.shape, dtype=current.dtype, device=current.device))

    return hook


class MomentumQueueObjective(Objective):
    """A :class:`MemoryQueue` filled by a momentum (moving-average) copy of the encoder.

    Each training step, before scoring: ``w_m <- momentum * w_m + (1 - momentum) * w`` for every trainable
    weight ``w`` of the encoder (``w_m = w`` at the first step). The batch is embedded and scored by the encoder
    as in :class:`MemoryQueue`; then the positives are embedded again, without gradients, by the encoder with
    its weights replaced by ``w_m`` (:func:`torch.func.functional_call`, in the encoder's current mode, so
    dropout and a training head apply as for the in-batch candidates), and those embeddings are enqueued.

    The moving average is one flat float32 buffer ``[P]`` (``P`` trainable weights) and is checkpointed with
    the queue. Under ``torchrun`` each rank embeds its own positives and the queue receives all of them.

    Args:
        queue: the queue and the loss it wraps.
        momentum: in ``[0, 1)``; the copy trails the encoder by about ``1 / (1 - momentum)`` steps.

    Example:
        >>> objective = MomentumQueueObjective(MemoryQueue(InfoNCELoss(), size=1024), momentum=0.995)
        >>> value = objective(encoder, text_batch)

    References: He et al., 2020, "Momentum Contrast for Unsupervised Visual Representation Learning"; Wu et al.,
    2022, "ESimCSE: Enhanced Sample Building Method for Contrastive Learning of Unsupervised Sentence Embedding".
    """

    def __init__(self, queue: MemoryQueue, momentum: float = 0.995) -> None:
        super().__init__()
        if not 0 <= momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1) (or None for no momentum encoder), got {momentum}")
        self.queue = queue
        self.momentum = momentum
        self.register_buffer("momentum_weights", torch.zeros(0))  # [P] float32, filled at the first step
        self.register_load_state_dict_pre_hook(_resize_to_loaded("momentum_weights"))

    def forward(self, encoder: Encoder, batch: TextBatch) -> Tensor:
        if self.training:
            self._update_momentum_weights(encoder)
        embedded = embed_batch(encoder, batch)
        value = self.queue.loss(self.queue.extend(embedded))
        if self.training:
            with torch.no_grad():
                keys = distributed.gather_with_grad(self.momentum_embed(encoder, batch.positives))
            self.queue.enqueue(keys, embedded.candidate_groups[positive_columns(embedded)])
        return value

    @torch.no_grad()
    def momentum_embed(self, encoder: Encoder, texts: Sequence[str]) -> Tensor:
        """``[n, D]`` embeddings of ``texts`` by the encoder with its moving-average weights."""
        named = _trainable(encoder)
        pieces = self.momentum_weights.split([p.numel() for _, p in named])
        weights = {name: piece.view_as(p).to(p.dtype) for (name, p), piece in zip(named, pieces)}
        return torch.func.functional_call(encoder, weights, (list(texts),))

    @torch.no_grad()
    def _update_momentum_weights(self, encoder: Encoder) -> None:
        current = torch.cat([p.detach().reshape(-1).float() for _, p in _trainable(encoder)])
        if self.momentum_weights.numel() == 0:
            self.momentum_weights = current.clone()
            return
        if self.momentum_weights.numel() != current.numel():
            raise ConfigError(
                f"the momentum weights hold {self.momentum_weights.numel()} values but the encoder has "
                f"{current.numel()} trainable weights: the checkpoint comes from another model"
            )
        if self.momentum_weights.device != current.device:
            self.momentum_weights = self.momentum_weights.to(current.device)
        self.momentum_weights.lerp_(current, 1 - self.momentum)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"


def _trainable(encoder: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, param) for name, param in encoder.named_parameters() if param.requires_grad]


def infonce_queue(
    temperature: float = 0.05,
    queue_size: int = 1024,
    momentum: float | None = None,
    filters: Sequence[FilterSpec] = (),
    mask_duplicates: bool = True,
) -> MemoryQueue | MomentumQueueObjective:
    """The registered ``infonce-queue``: InfoNCE over batch and queue candidates, optionally with a momentum copy."""
    queue = MemoryQueue(InfoNCELoss(temperature=temperature, steps=loss_steps(filters, mask_duplicates)), queue_size)
    if momentum is None:
        return queue
    return MomentumQueueObjective(queue, momentum)


LOSSES.register(
    "infonce-queue",
    LossSpec(
        name="infonce-queue",
        factory=infonce_queue,
        summary="InfoNCE plus a FIFO queue of past positives as extra negatives; optional momentum encoder",
        kinds=CONTRASTIVE_KINDS,
        reference="He et al., 2020, Momentum Contrast for Unsupervised Visual Representation Learning (MoCo)",
    ),
)
