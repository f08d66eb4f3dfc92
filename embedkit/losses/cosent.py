"""CoSENT (Su, 2022) for scored pairs: rank the pairs' cosines in the order of their gold scores.

For ``B`` pairs with cosine ``cos_i = cos(u_i, v_i)`` and gold score ``y_i``:

    loss = log( 1 + sum_{(i, j): y_i > y_j} exp( scale * (cos_j - cos_i) ) )

Every pair of pairs whose gold order is ``i`` above ``j`` adds a term that is large when the model's cosines
are in the wrong order. Only the order of the gold scores matters, never their scale, so STS scores in 0-5
and SICK-R's 1-5 train alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedkit.errors import ConfigError
from embedkit.losses.registry import LOSSES, LossSpec
from embedkit.types import EmbeddedBatch, Kind


def pair_cosines(batch: EmbeddedBatch) -> Tensor:
    """``[B]`` float32 cosine of each anchor with its own positive (a zero vector has cosine 0)."""
    b = batch.batch_size
    positives = batch.candidates[batch.target_offset : batch.target_offset + b]
    return (F.normalize(batch.anchors.float(), dim=-1) * F.normalize(positives.float(), dim=-1)).sum(dim=-1)


def cosent_from_cosines(cosines: Tensor, gold: Tensor, scale: float) -> Tensor:
    """CoSENT of ``[B]`` cosines against ``[B]`` gold scores. Returns a scalar.

    The ``[B, B]`` table of ``scale * (cos_j - cos_i)`` keeps the entries with ``y_i > y_j``; a zero logit is
    the ``1 +`` of the formula, and one logsumexp gives the loss without overflow.
    """
    logits = scale * (cosines[None, :] - cosines[:, None])  # [B, B]: (i, j) -> scale * (cos_j - cos_i)
    ranked = gold[:, None] > gold[None, :]  # [B, B]: y_i > y_j
    return torch.logsumexp(torch.cat([logits.new_zeros(1), logits[ranked]]), dim=0)


class CoSENTLoss(nn.Module):
    """CoSENT (Su, 2022): a ranking loss over the cosines of all scored pairs of a batch.

    Data: scored pairs ``(sentence1, sentence2, score)``; any monotone score scale.
    Input: an :class:`~embedkit.types.EmbeddedBatch` whose anchors ``[B, D]`` are the first sentences, whose
    first ``B`` candidates are the second sentences and whose ``scores`` ``[B]`` are the gold scores.
    Output: a scalar, ``log(1 + sum_{y_i > y_j} exp(scale (cos_j - cos_i)))``.

    Equal to sentence-transformers' ``CoSENTLoss(model, scale)``. Under ``torchrun`` each rank ranks its own
    pairs (the gold scores are not gathered).

    Args:
        scale: multiplies the cosine differences (an inverse temperature); ``20`` as in the paper.

    Example:
        >>> loss = CoSENTLoss(scale=20.0)
        >>> value = loss(embedded_batch)  # embedded_batch.scores holds the gold scores

    Reference: Su, 2022, "CoSENT: a more efficient sentence vector scheme than Sentence-BERT"
    (https://kexue.fm/archives/8847); Huang et al., 2024, "CoSENT: Consistent Sentence Embedding via
    Similarity Ranking", IEEE/ACM TASLP.
    """

    def __init__(self, scale: float = 20.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ConfigError(f"scale must be > 0, got {scale}")
        self.scale = scale

    def forward(self, batch: EmbeddedBatch) -> Tensor:
        if batch.scores is None:
            raise ConfigError("CoSENT needs gold scores: train it on scored pairs (sentence1, sentence2, score)")
        return cosent_from_cosines(pair_cosines(batch), batch.scores.to(batch.anchors.device), self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


LOSSES.register(
    "cosent",
    LossSpec(
        name="cosent",
        factory=CoSENTLoss,
        summary="CoSENT: pairs with higher gold scores must have higher cosines than pairs with lower ones",
        kinds=(Kind.SCORED,),
        reference="Su, 2022, CoSENT: a more efficient sentence vector scheme than Sentence-BERT",
    ),
)
