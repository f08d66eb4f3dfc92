"""DCLR (Zhou et al., 2022): debiased contrastive learning of unsupervised sentence representations.

SimCSE's InfoNCE over two dropout views, with two corrections of its random negatives. For ``B`` anchors
``h_i``, ``C`` in-batch candidates ``h_j^+`` and ``K`` noise negatives ``n_k``:

    loss_i = -log( e^{s(h_i, h_i^+)/t} / ( sum_j a_ij e^{s(h_i, h_j^+)/t} + sum_k e^{s(h_i, n_k)/t} ) )

- **instance weighting** against false negatives: ``a_ij = 0`` when a frozen complementary encoder finds the two
  texts more similar than ``phi`` (cosine ``> phi``), else 1 (always 1 for the positive). The complementary
  cosines are the score table's ``guide`` and the weights are the shared
  ``ScoreCeiling(phi, source="guide")`` step, after the usual duplicate masking;
- **noise-based negatives** against anisotropy: ``K = int(noise_times * B)`` vectors drawn from ``N(0, I)`` in the
  embedding space, then moved by ``noise_steps`` steps of normalised gradient ascent on the same loss,
  ``n <- n + noise_lr * g / ||g||`` with ``g`` the gradient of the loss with respect to ``n``, so that they become
  harder negatives; they enter the final loss detached (they are not parameters and get no update from the
  optimizer).

Checked against the code released with the paper (RUCAIBox/DCLR ``run.sh``: phi 0.9, noise_times 1 for BERT-base,
batch 128, lr 3e-5, temperature 0.05, a frozen unsupervised SimCSE as the complementary model; its ``models.py``:
noise ``torch.randn`` (standard deviation 1), ascent step ``1e-3`` on the per-vector normalised gradient,
cosine threshold compared as ``cos/t > phi/t``). Differences and why:

- the weights follow the paper: a weight of 0 removes the negative from the softmax (the released code
  multiplies the logit by 0, which keeps it with logit 0, i.e. ``e^0 = 1`` in the denominator);
- the final loss is the paper's cross-entropy (the released code we found reduces the weighted softmax with a
  per-entry binary cross-entropy);
- the ascent maximises the weighted loss that is trained (the released code ascends the unweighted one);
- by default the complementary model is a frozen copy of the encoder at the start of training: the paper's is
  an unsupervised SimCSE checkpoint, which needs a download; pass its name or path as ``complementary``.

With the official step size the ascent barely moves the noise (4 steps of ``1e-3`` on vectors of norm about
``sqrt(D)``): the noise negatives act as near-random directions; ``noise_lr`` can make the ascent matter.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from embedkit import distributed
from embedkit.encoders.batching import embed_batch
from embedkit.encoders.sentence_transformer import load_encoder
from embedkit.errors import ConfigError
from embedkit.losses.infonce import batch_scores, cosine_table, info_nce_from_scores
from embedkit.losses.objective import Objective
from embedkit.losses.registry import LOSSES, LossSpec
from embedkit.losses.steps import MaskDuplicates, ScoreCeiling, apply_steps
from embedkit.types import EmbeddedBatch, Kind, Scores, TextBatch

if TYPE_CHECKING:
    from embedkit.encoders import Encoder


def with_extra_negatives(scores: Scores, anchors: Tensor, negatives: Tensor) -> Scores:
    """Append ``K`` shared negatives to every row of a filtered table: ``[B, C] -> [B, C + K]``.

    The new columns are valid with weight 1 and take no part in filter steps, so this runs after them; the
    returned table has no guide or candidate groups (they describe texts, and the new columns are not texts).

    Args:
        scores: the filtered ``[B, C]`` table.
        anchors: ``[B, D]`` anchor embeddings.
        negatives: ``[K, D]`` extra negatives.
    """
    extra = cosine_table(anchors, negatives)  # [B, K]
    return scores.replace(
        values=torch.cat([scores.values, extra], dim=1),
        valid=torch.cat([scores.valid, torch.ones_like(extra, dtype=torch.bool)], dim=1),
        log_weights=torch.cat([scores.log_weights, torch.zeros_like(extra)], dim=1),
        guide=None,
        candidate_groups=None,
    )


class DCLRObjective(Objective):
    """DCLR: InfoNCE with complementary-model instance weights and gradient-refined noise negatives.

    Data: sentences (anchor = positive = text, two dropout views). :meth:`setup` must run once with the encoder
    before training when ``complementary`` is ``None``: it freezes a copy of the encoder as it is then (the start
    of training, also when a run is resumed in a new process, since the checkpoint is loaded afterwards). The
    complementary model is frozen: neither optimised nor checkpointed.

    Under ``torchrun`` it trains exactly as one process on the concatenated batch: each rank's anchors meet the
    candidates of every rank (gathered by :func:`~embedkit.encoders.batching.embed_batch`, the complementary
    model's embeddings too), and the noise negatives, which every row shares, are drawn and refined for the whole
    batch, identically on every rank (see :meth:`noise_negatives`).

    Args:
        temperature: InfoNCE temperature (0.05).
        phi: in-batch negatives whose complementary cosine exceeds ``phi`` get weight 0; in ``(0, 1]``, and ``1``
            keeps every negative (official 0.9 for BERT-base, 0.85 for RoBERTa).
        noise_times: noise negatives per anchor: ``int(noise_times * B)`` in all (official 1 for BERT-base); 0
            turns them off.
        noise_steps: gradient-ascent steps on the noise (4).
        noise_lr: the length of each ascent step (official 1e-3).
        complementary: name or path of a sentence-transformers model to use as the frozen complementary encoder
            (the paper uses an unsupervised SimCSE); ``None``: a frozen copy of the encoder at :meth:`setup`.

    Example:
        >>> objective = build_loss("dclr", phi=0.9, noise_times=1)
        >>> objective.setup(encoder)
        >>> fit(encoder, read_examples("wiki.txt", kind="sentences"), objective, FitSettings(batch_size=128))
    """

    def __init__(
        self,
        temperature: float = 0.05,
        phi: float = 0.9,
        noise_times: float = 1.0,
        noise_steps: int = 4,
        noise_lr: float = 1e-3,
        complementary: str | None = None,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        if not 0 < phi <= 1:
            raise ConfigError(f"phi must be in (0, 1] (a cosine above which negatives are dropped), got {phi}")
        if noise_times < 0:
            raise ConfigError(f"noise_times must be >= 0, got {noise_times}")
        if noise_steps < 0 or int(noise_steps) != noise_steps:
            raise ConfigError(f"noise_steps must be a whole number >= 0, got {noise_steps}")
        if noise_lr < 0:
            raise ConfigError(f"noise_lr must be >= 0, got {noise_lr}")
        self.temperature = temperature
        self.phi = phi
        self.noise_times = noise_times
        self.noise_steps = int(noise_steps)
        self.noise_lr = noise_lr
        self.complementary_name = complementary
        self.steps = (MaskDuplicates(), ScoreCeiling(phi, source="guide"))
        self.complementary: Encoder | None = None
        if complementary is not None:
            self.complementary = _frozen(load_encoder(complementary, device="cpu", precision="fp32"))

    def setup(self, encoder: Encoder) -> None:
        """Freeze a copy of ``encoder`` as the complementary model when none was named; move it to the encoder's device.

        Idempotent: a second call keeps the first copy.
        """
        if self.complementary is None:
            self.complementary = _frozen(copy.deepcopy(encoder))
        self.complementary.to(encoder.device)

    def train(self, mode: bool = True) -> DCLRObjective:
        super().train(mode)
        if self.complementary is not None:
            self.complementary.eval()  # frozen: its cosines come without dropout
        return self

    def forward(self, encoder: Encoder, batch: TextBatch) -> Tensor:
        if self.complementary is None:
            raise ConfigError(
                "DCLRObjective.setup(encoder) has not run: it freezes the complementary copy of the encoder, "
                "which must happen before training starts"
            )
        return self.loss(embed_batch(encoder, batch), self.complementary_cosines(batch))

    def complementary_cosines(self, batch: TextBatch) -> Tensor:
        """``[B, C]`` cosines of the anchors against the candidates under the frozen complementary model.

        Under ``torchrun`` the candidates are those of every rank (``[B, W * C]``), in the order of the encoder's
        gathered candidates. Clamped to ``[-1, 1]``: rounding can put the cosine of identical texts just above 1,
        and ``phi = 1`` must drop nothing.
        """
        with torch.no_grad():
            embedded = embed_batch(self.complementary, batch)
        return cosine_table(embedded.anchors, embedded.candidates).clamp(-1.0, 1.0)

    # -- on embeddings: the parts the tests check against references ---------------------------------------
    def scores(self, views: EmbeddedBatch, guide: Tensor) -> Scores:
        """The ``[B, C]`` in-batch table with duplicates masked and complementary cosines above ``phi`` dropped."""
        return apply_steps(batch_scores(views).replace(guide=guide.to(views.anchors.device)), self.steps)

    def noise_negatives(self, anchors: Tensor, scores: Scores) -> Tensor:
        """``[K, D]`` noise negatives: ``N(0, I)`` draws refined by normalised gradient ascent on the loss.

        ``K = int(noise_times * W * B)`` for ``B`` anchors on each of ``W`` processes: the noise is shared by the
        rows of every rank, so under ``torchrun`` every rank holds the noise one process would draw for the whole
        batch (rank 0's draws, see :func:`shared_normal`) and refines it identically, each step following the
        gradient of the whole batch's loss.

        Args:
            anchors: ``[B, D]`` anchor embeddings (detached here: the ascent must not touch the encoder's graph).
            scores: the filtered in-batch table ``[B, C]`` (``[B, W * C]`` gathered) whose loss the ascent raises.
        """
        anchors = anchors.detach().float()
        count = int(self.noise_times * distributed.world_size() * anchors.shape[0])
        noise = shared_normal(count, anchors.shape[1]).to(anchors.device)
        if count == 0 or self.noise_steps == 0:
            return noise
        fixed = scores.replace(values=scores.values.detach())
        with torch.enable_grad():
            for _ in range(self.noise_steps):
                noise.requires_grad_(True)
                ascent = info_nce_from_scores(with_extra_negatives(fixed, anchors, noise), self.temperature)
                (gradient,) = torch.autograd.grad(ascent, noise)
                # The whole batch's loss is the mean of the ranks' losses (equal batches), so its gradient is the
                # mean of theirs; every rank averages the same gathered values and takes the same step.
                gradient = distributed.gather_with_grad(gradient[None]).mean(dim=0)
                # A zero gradient (a noise vector the softmax ignores) normalises to zero: the vector stays put.
                noise = (noise + self.noise_lr * F.normalize(gradient, dim=-1)).detach()
        return noise

    def loss(self, views: EmbeddedBatch, guide: Tensor, noise: Tensor | None = None) -> Tensor:
        """DCLR's loss of embedded views given complementary cosines ``guide`` ``[B, C]``. Returns a scalar.

        Under ``torchrun`` ``views`` holds the gathered candidates and ``guide`` is ``[B, W * C]`` (see
        :meth:`complementary_cosines`). ``noise`` ``[K, D]`` replaces the sampled noise negatives (tests pass their
        own); ``None`` samples them.
        """
        scores = self.scores(views, guide)
        if noise is None:
            noise = self.noise_negatives(views.anchors, scores)
        if noise.shape[0] > 0:
            scores = with_extra_negatives(scores, views.anchors, noise)
        return info_nce_from_scores(scores, self.temperature)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, phi={self.phi}, noise_times={self.noise_times}, "
            f"noise_steps={self.noise_steps}, noise_lr={self.noise_lr}, complementary={self.complementary_name!r}"
        )


def shared_normal(count: int, dim: int) -> Tensor:
    """``[count, dim]`` draws from ``N(0, I)`` on the CPU, the same on every rank under ``torchrun`` (rank 0's).

    Drawn on the CPU because a pickled GPU tensor would land on rank 0's device on every rank.
    """
    return distributed.broadcast_object(torch.randn(count, dim))


def _frozen(encoder: Encoder) -> Encoder:
    encoder.requires_grad_(False)
    return encoder.eval()


LOSSES.register(
    "dclr",
    LossSpec(
        name="dclr",
        factory=DCLRObjective,
        summary="DCLR: InfoNCE with complementary-model weights (drop negatives above phi) + gradient-refined noise",
        kinds=(Kind.SENTENCES,),
        reference="Zhou et al., 2022, Debiased Contrastive Learning of Unsupervised Sentence Representations",
    ),
)
