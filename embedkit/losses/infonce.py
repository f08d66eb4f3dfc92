"""InfoNCE with in-batch negatives, optional hard negatives and a symmetric term; the SimCSE presets.

The loss is a cross-entropy over a masked, weighted ``[B, C]`` score table (:class:`embedkit.types.Scores`):

    loss_i = -log( exp(s_ii / t + w_ii) / sum_{j valid} exp(s_ij / t + w_ij) )

with ``s`` the cosine similarity of anchor ``i`` and candidate ``j``, ``t`` the temperature and ``w`` the
log-weights that filter steps may set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedkit.errors import ConfigError
from embedkit.losses.registry import CONTRASTIVE_KINDS, LOSSES, LossSpec
from embedkit.losses.steps import MaskDuplicates, Step, apply_steps, with_filters
from embedkit.types import EmbeddedBatch, Kind, Scores


def cosine_table(anchors: Tensor, candidates: Tensor) -> Tensor:
    """``[B, D] x [C, D] -> [B, C]`` cosine similarities, computed in float32 whatever the input precision."""
    return F.normalize(anchors.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T


def info_nce_from_scores(scores: Scores, temperature: float) -> Tensor:
    """Mean cross-entropy of a score table. Returns a scalar."""
    logits = scores.values / temperature + scores.log_weights
    logits = logits.masked_fill(~(scores.valid | scores.target_mask()), float("-inf"))
    return F.cross_entropy(logits, scores.targets)


def batch_scores(batch: EmbeddedBatch) -> Scores:
    """Anchors against all candidates (positives, then hard negatives).

    Row ``i``'s target is column ``target_offset + i`` (``i`` in one process; the rank's slice when the
    candidates were gathered from every rank).
    """
    targets = torch.arange(batch.batch_size, device=batch.anchors.device) + batch.target_offset
    return Scores.from_values(
        cosine_table(batch.anchors, batch.candidates),
        targets,
        anchor_groups=batch.anchor_groups,
        candidate_groups=batch.candidate_groups,
    )


def reverse_scores(batch: EmbeddedBatch) -> Scores:
    """Positives against anchors: the second direction of a symmetric loss (hard negatives take no part).

    Gathered from every rank, the local positives score against the anchors of all ranks.
    """
    b = batch.batch_size
    positives = slice(batch.target_offset, batch.target_offset + b)
    anchors, anchor_groups = batch.anchors, batch.anchor_groups
    if batch.anchor_pool is not None:
        anchors, anchor_groups = batch.anchor_pool, batch.anchor_pool_groups
    targets = torch.arange(b, device=batch.anchors.device) + batch.anchor_offset
    return Scores.from_values(
        cosine_table(batch.candidates[positives], anchors),
        targets,
        anchor_groups=batch.candidate_groups[positives],
        candidate_groups=anchor_groups,
    )


class InfoNCELoss(nn.Module):
    """InfoNCE (van den Oord et al., 2018) with in-batch negatives; hard negatives when the batch has them.

    Data: pairs ``(anchor, positive)``, triplets ``(anchor, positive, negative...)``, sentences (two dropout
    views, as in unsupervised SimCSE) or preference rows (rejected = hard negative).

    Each anchor's positive must score above every other candidate of the batch: the other rows' positives
    and every hard negative. Candidates with the same text as the anchor or its positive, and the positives of
    other rows with the same anchor (a query with several relevant documents), are masked (see
    :class:`~embedkit.losses.steps.MaskDuplicates`). With ``symmetric=True`` the loss is the mean of the
    anchor-to-candidate term and the positive-to-anchor term (as in CLIP).

    Args:
        temperature: divides the cosine similarities; ``0.05`` is SimCSE's value, ``1/20`` the
            sentence-transformers default ``scale=20``.
        symmetric: add the positive-to-anchor direction.
        steps: filter steps applied to the score table before the cross-entropy.

    Example:
        >>> loss = InfoNCELoss(temperature=0.05)
        >>> value = loss(embedded_batch)  # scalar tensor
    """

    def __init__(
        self,
        temperature: float = 0.05,
        symmetric: bool = False,
        steps: Sequence[Step] = (MaskDuplicates(),),
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.symmetric = symmetric
        self.steps = tuple(steps)

    def scores(self, batch: EmbeddedBatch) -> Scores:
        """The filtered ``[B, C]`` table the loss reduces."""
        return apply_steps(batch_scores(batch), self.steps)

    def forward(self, batch: EmbeddedBatch) -> Tensor:
        loss = info_nce_from_scores(self.scores(batch), self.temperature)
        if self.symmetric:
            backward = info_nce_from_scores(apply_steps(reverse_scores(batch), self.steps), self.temperature)
            loss = (loss + backward) / 2
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, symmetric={self.symmetric}"


LOSSES.register(
    "infonce",
    LossSpec(
        name="infonce",
        factory=with_filters(InfoNCELoss),
        summary="InfoNCE over in-batch negatives plus any hard negatives; optional symmetric term",
        kinds=CONTRASTIVE_KINDS,
        reference="van den Oord et al., 2018, Representation Learning with Contrastive Predictive Coding",
    ),
)
LOSSES.register(
    "simcse-unsup",
    LossSpec(
        name="simcse-unsup",
        factory=with_filters(InfoNCELoss),
        summary="unsupervised SimCSE: two dropout views of each sentence are positives, temperature 0.05",
        kinds=(Kind.SENTENCES,),
        reference="Gao et al., 2021, SimCSE: Simple Contrastive Learning of Sentence Embeddings",
        presets={"temperature": 0.05, "symmetric": False},
    ),
)
LOSSES.register(
    "simcse-sup",
    LossSpec(
        name="simcse-sup",
        factory=with_filters(InfoNCELoss),
        summary="supervised SimCSE: entailment positive, contradiction hard negative, temperature 0.05",
        kinds=(Kind.TRIPLETS, Kind.PREFERENCE),
        reference="Gao et al., 2021, SimCSE: Simple Contrastive Learning of Sentence Embeddings",
        presets={"temperature": 0.05, "symmetric": False},
    ),
)
