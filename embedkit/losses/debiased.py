"""Debiased InfoNCE (Chuang et al., 2020): correct the negative term for negatives that are secretly positives.

In-batch negatives are drawn from the data distribution, so with class prior ``tau_plus`` some of them share
the anchor's latent class. For row ``i`` with logits ``l_ij = s_ij / t + w_ij`` over its ``N_i`` valid
negatives ``j`` and positive logit ``l_i+``, the paper replaces ``sum_j exp(l_ij)`` by the estimator

    Ng_i = max( (sum_j exp(l_ij) - N_i * tau_plus * exp(l_i+)) / (1 - tau_plus),  N_i * exp(-1 / t) )

whose lower clamp is the smallest value the true negative term can take (every cosine at -1), and the loss is

    loss_i = -log( exp(l_i+) / (exp(l_i+) + Ng_i) ) = softplus( log Ng_i - l_i+ ).

With ``tau_plus = 0`` this is InfoNCE. The score table, its duplicate masking and filter steps are those of
:class:`~embedkit.losses.infonce.InfoNCELoss`; ``N_i`` counts the negatives that stay valid after the steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from embedkit.errors import ConfigError
from embedkit.losses.infonce import InfoNCELoss, reverse_scores
from embedkit.losses.registry import CONTRASTIVE_KINDS, LOSSES, LossSpec
from embedkit.losses.steps import MaskDuplicates, Step, apply_steps, with_filters
from embedkit.types import EmbeddedBatch, Scores


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate near 0 and for large ``|x|`` (Maechler, 2012).

    Each branch sees a stand-in where the other is chosen: an unchosen branch with an infinite gradient would
    still turn the chosen one's gradient into NaN.
    """
    near_zero = x > -math.log(2)
    stand_in = torch.full_like(x, -1.0)
    small = torch.log(-torch.expm1(torch.where(near_zero, x, stand_in)))
    large = torch.log1p(-torch.exp(torch.where(near_zero, stand_in, x)))
    return torch.where(near_zero, small, large)


def debiased_info_nce_from_scores(scores: Scores, temperature: float, tau_plus: float) -> Tensor:
    """Mean debiased InfoNCE of a ``[B, C]`` score table. Returns a float32 scalar.

    Computed in log space: ``log(S - N tau_plus P)`` is ``log S + log(1 - exp(log(N tau_plus P / S)))``, which
    stays accurate when the correction removes most of ``S``; the clamp is taken on logarithms. A row whose
    negatives were all filtered away has ``Ng = 0`` and contributes a loss of 0.
    """
    logits = scores.values.float() / temperature + scores.log_weights
    negative = scores.valid & ~scores.target_mask()  # [B, C]
    positive = logits.gather(1, scores.targets[:, None]).squeeze(1)  # [B] log P
    count = negative.sum(dim=1)  # [B] N
    has_negatives = count > 0
    # Rows without negatives get dummy zero logits: a logsumexp over only -inf has a NaN gradient, and the
    # row's result is replaced below anyway.
    negative_logits = torch.where(negative, logits, float("-inf"))
    negative_logits = torch.where(has_negatives[:, None], negative_logits, torch.zeros_like(logits))
    log_sum = torch.logsumexp(negative_logits, dim=1)  # [B] log S
    log_count = count.clamp(min=1).to(logits.dtype).log()  # [B] log N
    log_floor = log_count - 1 / temperature  # [B] log of the clamp N e^{-1/t}

    log_tau = math.log(tau_plus) if tau_plus > 0 else -math.inf
    log_ratio = log_tau + log_count + positive - log_sum  # [B] log(N tau_plus P / S)
    # Where N tau_plus P >= S the corrected sum is not positive and the clamp applies; those rows compute the
    # estimate from a stand-in ratio so that the discarded branch has a finite gradient.
    usable = has_negatives & (log_ratio < 0)
    log_ratio = torch.where(usable, log_ratio, torch.full_like(log_ratio, -1.0))
    log_estimate = log_sum + _log1mexp(log_ratio) - math.log1p(-tau_plus)
    log_ng = torch.where(usable & (log_estimate > log_floor), log_estimate, log_floor)
    log_ng = torch.where(has_negatives, log_ng, torch.full_like(log_ng, float("-inf")))
    return F.softplus(log_ng - positive).mean()


class DebiasedInfoNCELoss(InfoNCELoss):
    """Debiased InfoNCE (Chuang et al., 2020) over the InfoNCE score table.

    Data: the kinds of :class:`~embedkit.losses.infonce.InfoNCELoss` (sentences, pairs, triplets, preference).
    Input: an :class:`~embedkit.types.EmbeddedBatch` with anchors ``[B, D]`` and candidates ``[C, D]``.
    Output: a scalar.

    The negative term ``sum_j exp(s_ij / t)`` is replaced by the paper's tau+ estimator (see
    :mod:`embedkit.losses.debiased`), which subtracts the expected share ``tau_plus`` of false negatives and
    is clamped from below at ``N exp(-1/t)``, ``N`` being the number of valid negatives of the row.

    Args:
        temperature: divides the cosine similarities (``0.05`` as SimCSE; the paper's image experiments use 0.5).
        tau_plus: the class prior, the expected fraction of negatives that share the anchor's class, in
            ``[0, 1)``; ``0`` gives InfoNCE. The paper's default is 0.1.
        symmetric: add the positive-to-anchor direction, debiased in the same way.
        steps: filter steps applied to the score table first.

    Example:
        >>> loss = DebiasedInfoNCELoss(temperature=0.05, tau_plus=0.1)
        >>> value = loss(embedded_batch)  # scalar tensor

    Reference: Chuang, Robinson, Lin, Torralba, Jegelka, 2020, "Debiased Contrastive Learning", NeurIPS.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        tau_plus: float = 0.1,
        symmetric: bool = False,
        steps: Sequence[Step] = (MaskDuplicates(),),
    ) -> None:
        super().__init__(temperature=temperature, symmetric=symmetric, steps=steps)
        if not 0 <= tau_plus < 1:
            raise ConfigError(f"tau_plus must be in [0, 1), got {tau_plus}")
        self.tau_plus = tau_plus

    def forward(self, batch: EmbeddedBatch) -> Tensor:
        loss = debiased_info_nce_from_scores(self.scores(batch), self.temperature, self.tau_plus)
        if self.symmetric:
            reverse = apply_steps(reverse_scores(batch), self.steps)
            loss = (loss + debiased_info_nce_from_scores(reverse, self.temperature, self.tau_plus)) / 2
        return loss

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tau_plus={self.tau_plus}"


LOSSES.register(
    "debiased-infonce",
    LossSpec(
        name="debiased-infonce",
        factory=with_filters(DebiasedInfoNCELoss),
        summary="InfoNCE whose negative term is debiased for false negatives with class prior tau_plus",
        kinds=CONTRASTIVE_KINDS,
        reference="Chuang et al., 2020, Debiased Contrastive Learning",
    ),
)
