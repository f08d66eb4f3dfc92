"""The data types shared by every part of embedkit.

Every data kind becomes the same :class:`TextBatch`: ``B`` anchors, ``B`` positives and ``N`` hard negatives
per anchor. Encoding it gives an :class:`EmbeddedBatch`; scoring anchors against candidates gives a
:class:`Scores` table ``[B, C]`` that filter steps shrink or re-weight and that every InfoNCE-family loss
reduces with a cross-entropy.

Two protocols are the seams between layers: every encoder satisfies :class:`TextEncoder`, every evaluator
:class:`Evaluator`. :class:`SupportsEncode` is the part of :class:`TextEncoder` that code which only embeds texts
needs.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # imported where used: the CLI reads these types without loading torch
    import numpy as np
    import torch
    from torch import Tensor, nn

PADDING_GROUP = -(2**63)
"""The group id of a padding candidate: a row with fewer negatives than its batch's widest row is padded with
empty texts in this group, which no score table ever counts (:meth:`Scores.from_values`)."""
JsonValue = str | int | float | bool | None | Sequence["JsonValue"] | Mapping[str, "JsonValue"]
"""A value that ``json.dumps`` writes and ``json.loads`` gives back (read-only containers, so that a
``dict[str, float]`` or a ``list[dict[str, str]]`` is one too)."""


class Kind(str, enum.Enum):
    """The data kinds of DESIGN.md; each becomes (anchor, positive, negatives[, score])."""

    SENTENCES = "sentences"  # text -> anchor = positive = text (two dropout views)
    PAIRS = "pairs"  # anchor, positive
    TRIPLETS = "triplets"  # anchor, positive, negative | negatives
    SCORED = "scored"  # sentence1, sentence2, score
    PREFERENCE = "preference"  # prompt, chosen, rejected -> anchor, positive, hard negative


@dataclass(frozen=True)
class Example:
    """One training or evaluation row, whatever its kind.

    ``source`` is ``(path, line)`` of the row in its file, kept so that later errors can point at it.
    """

    anchor: str
    positive: str
    negatives: tuple[str, ...] = ()
    score: float | None = None
    source: tuple[str, int] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TextBatch:
    """A collated batch of texts.

    Candidates are the ``B`` positives followed by the negatives column by column (the first negative of
    every row, then the second, ...), so candidate ``i`` is the positive of row ``i`` and the whole candidate
    list has ``C = B * (1 + N)`` texts.

    Attributes:
        kind: the data kind the rows came from.
        anchors: ``B`` anchor texts.
        positives: ``B`` positive texts.
        negatives: ``N`` columns of ``B`` texts each (``negatives[k][i]`` is row ``i``'s k-th negative).
        scores: ``[B]`` float gold scores (scored kind) or margins (preference rows that give one), else
            ``None``.
        anchor_groups: ``[B]`` long, one id per distinct text in the batch.
        candidate_groups: ``[C]`` long, ids from the same numbering as ``anchor_groups``.
    """

    kind: Kind
    anchors: list[str]
    positives: list[str]
    negatives: list[list[str]]
    scores: Tensor | None
    anchor_groups: Tensor
    candidate_groups: Tensor

    def __len__(self) -> int:
        return len(self.anchors)

    @property
    def candidates(self) -> list[str]:
        """``C`` candidate texts: positives, then each column of negatives."""
        return [*self.positives, *(text for column in self.negatives for text in column)]


@dataclass(frozen=True)
class EmbeddedBatch:
    """Embeddings of a :class:`TextBatch`.

    Attributes:
        anchors: ``[B, D]`` anchor embeddings.
        candidates: ``[C, D]`` candidate embeddings, in :attr:`TextBatch.candidates` order.
        anchor_groups: ``[B]`` long text ids.
        candidate_groups: ``[C]`` long text ids.
        scores: ``[B]`` gold scores (scored kind), preference margins, or ``None``.
        target_offset: column of row 0's positive among the candidates; ``0`` in one process, the rank's
            offset when the candidates were gathered from every rank.
        anchor_pool: ``[W * B, D]`` the anchors of every rank (for the positive-to-anchor direction of a
            symmetric loss), or ``None`` in one process.
        anchor_pool_groups: ``[W * B]`` text ids of ``anchor_pool``.
        anchor_offset: row of this rank's first anchor in ``anchor_pool``.
    """

    anchors: Tensor
    candidates: Tensor
    anchor_groups: Tensor
    candidate_groups: Tensor
    scores: Tensor | None = None
    target_offset: int = 0
    anchor_pool: Tensor | None = None
    anchor_pool_groups: Tensor | None = None
    anchor_offset: int = 0

    @property
    def batch_size(self) -> int:
        return self.anchors.shape[0]


@dataclass(frozen=True)
class Scores:
    """A score table of ``B`` anchors against ``C`` candidates, with what the loss needs to reduce it.

    Filter steps return a new :class:`Scores` whose ``valid`` mask is a subset of the old one or whose
    ``log_weights`` changed; the target column of each row always stays valid.

    Attributes:
        values: ``[B, C]`` similarities (cosine unless stated otherwise), not yet divided by a temperature.
        targets: ``[B]`` long, the column of each row's positive.
        valid: ``[B, C]`` bool, candidates that may serve as negatives (and the targets).
        log_weights: ``[B, C]`` float added to the logits; ``0`` is weight 1.
        anchor_groups: ``[B]`` long text ids of the anchors, or ``None``.
        candidate_groups: ``[C]`` long text ids of the candidates, or ``None``.
        guide: ``[B, C]`` similarities of the same pairs under a frozen guide model (GISTEmbed), or ``None``.
    """

    values: Tensor
    targets: Tensor
    valid: Tensor
    log_weights: Tensor
    anchor_groups: Tensor | None = None
    candidate_groups: Tensor | None = None
    guide: Tensor | None = None

    @classmethod
    def from_values(
        cls,
        values: Tensor,
        targets: Tensor,
        anchor_groups: Tensor | None = None,
        candidate_groups: Tensor | None = None,
    ) -> Scores:
        """A table where every candidate is valid but padding (:data:`PADDING_GROUP`), and every weight is 1."""
        import torch

        valid = torch.ones_like(values, dtype=torch.bool)
        if candidate_groups is not None:
            valid &= (candidate_groups != PADDING_GROUP)[None, :]
        return cls(
            values=values,
            targets=targets,
            valid=valid,
            log_weights=torch.zeros_like(values),
            anchor_groups=anchor_groups,
            candidate_groups=candidate_groups,
        )

    def replace(self, **changes: Tensor | None) -> Scores:
        return dataclasses.replace(self, **changes)

    def target_mask(self) -> Tensor:
        """``[B, C]`` bool, true at each row's target column."""
        import torch

        mask = torch.zeros_like(self.valid)
        mask[torch.arange(self.values.shape[0], device=self.values.device), self.targets] = True
        return mask

    def positive_values(self) -> Tensor:
        """``[B]`` the score of each row's positive."""
        return self.values.gather(1, self.targets[:, None]).squeeze(1)


@runtime_checkable
class SupportsEncode(Protocol):
    """The one thing scoring code needs of an encoder: ``encode(texts, batch_size=)``. Evaluators and selectors
    that only embed texts take this rather than a whole :class:`TextEncoder`, so that any lookup table of
    vectors can stand in for a model."""

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """``n`` texts -> a float ``[n, D]`` array, in input order."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    """What embedkit needs of an encoder: a sentence-transformers :class:`~embedkit.encoders.Encoder`, a reward
    model's :class:`~embedkit.encoders.reward.RewardModelEncoder`, or any wrapper around one.

    Attributes:
        name: the name or path it was loaded from (recorded in index manifests and reports).
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    """

    name: str
    precision: str

    @property
    def model(self) -> nn.Module:
        """The underlying torch module (read-only here, so that an encoder may hold a subclass of it)."""
        ...

    @property
    def dim(self) -> int:
        """The embedding size ``D``."""
        ...

    @property
    def max_seq_length(self) -> int:
        """Inputs are truncated to this many tokens."""
        ...

    @property
    def device(self) -> torch.device: ...

    @property
    def prompts(self) -> Mapping[str, str]:
        """Named prompts put before texts (sentence-transformers' ``prompts``, e.g. ``{"query": "query: "}``;
        see :mod:`embedkit.encoders.prompts`), empty for a model without any."""
        ...

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        normalize: bool = False,
        show_progress: bool | None = None,
        *,
        prompt: str | None = None,
    ) -> np.ndarray:
        """``n`` texts -> a float32 ``[n, D]`` array, in input order, without gradients; ``prompt`` goes before
        every text (``None``: the model's default prompt, if it has one)."""
        ...


@runtime_checkable
class Evaluator(Protocol):
    """``evaluator(encoder) -> {metric: value}``; :func:`embedkit.fit` keeps the model that is best by
    ``metrics[primary_metric]``, the highest when ``higher_is_better``, else the lowest."""

    primary_metric: str
    higher_is_better: bool

    def __call__(self, encoder: TextEncoder) -> dict[str, float]: ...
