"""Loss ``reward-bt``: a reward model on a sentence encoder, a scalar head over pooled ``(prompt, response)``
representations (the head and the trained model are :mod:`embedkit.encoders.reward`).

Training objective (:class:`RewardModelObjective`, registered as loss ``reward-bt``), for a batch of ``B``
preference rows with rewards ``r_c = head(h(x, y_chosen))`` and ``r_r = head(h(x, y_rejected))`` (``h`` the
pooled representation of the rendered pair, ``head`` a linear layer on it, see :class:`RewardHead`):

    L = mean_i -log sigmoid(r_c,i - r_r,i - m_i)                          (Bradley-Terry, with margin m)
        + contrastive_weight * InfoNCE(h'(x, y_c) | h(x, y_c), negatives) (representation term)

The Bradley-Terry loss is the pairwise ranking loss of reward modelling (Bradley and Terry, 1952; Ouyang et
al., 2022, InstructGPT); the margin ``m`` (Touvron et al., 2023, Llama 2) asks for a larger reward gap where
the preference is strong.

The representation term follows "Secrets of RLHF in Large Language Models Part II: Reward Modeling" (Wang et
al., 2024, arXiv:2401.06080), which adds an unsupervised contrastive loss to the ranking loss so that the
reward model captures what separates chosen from rejected responses instead of over-fitting to noisy labels;
the paper tries SimCSE (instance-level) and SwAV (cluster-level) losses, on single-response representations
and on chosen-minus-rejected difference representations. Our choice is SimCSE on single-response
representations, with supervised SimCSE's hard negative (Gao et al., 2021): each row's rendered
``(prompt, chosen)`` is the anchor, a second dropout view of the same text is its positive, and the candidates
it must out-score are the second views of every other row's chosen text plus every rejected text of the batch,
its own rejected reply being the hardest. Chosen and rejected representations are thus contrasted across the
whole batch, through the same score table, duplicate masking and cross-entropy as every InfoNCE loss here.
The second view costs one more forward pass over the chosen texts (1.5x the encoder work of Bradley-Terry
alone). Representations are the encoder's training path ``encoder(texts)``; the inference path is
:meth:`embedkit.encoders.reward.RewardModel.score`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parameter import is_lazy

from embedkit import distributed
from embedkit.data.collate import collate
from embedkit.data.render import render_for
from embedkit.encoders import Encoder
from embedkit.encoders.batching import embedded_from
from embedkit.encoders.reward import RewardHead, write_reward_head
from embedkit.errors import ConfigError, DataError
from embedkit.losses.infonce import InfoNCELoss
from embedkit.losses.objective import Objective
from embedkit.losses.registry import LOSSES, LossSpec
from embedkit.types import Example, Kind, TextBatch

HEAD_SEED = 0


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, margin: float | Tensor = 0.0) -> Tensor:
    """Mean ``-log sigmoid(r_c - r_r - m)`` over ``[B]`` rewards; ``margin`` is a float or a ``[B]`` tensor.

    Computed in float32 with ``logsigmoid`` (stable for large gaps). Returns a scalar.
    """
    return -F.logsigmoid(chosen.float() - rejected.float() - margin).mean()


def contrastive_batch(chosen: list[str], rejected: list[str]) -> TextBatch:
    """The representation term's batch of ``B`` rendered pairs: each ``(prompt, chosen)`` text is an anchor and,
    through a second dropout view, its own positive; the ``(prompt, rejected)`` texts are hard negatives."""
    rows = [Example(anchor=c, positive=c, negatives=(r,)) for c, r in zip(chosen, rejected)]
    return collate(rows, Kind.PREFERENCE)


class RewardModelObjective(Objective):
    """Bradley-Terry reward modelling with an optional contrastive representation term (see the module doc).

    Data: preference rows (anchor = prompt, positive = chosen, one negative = rejected). Each pair is
    rendered with :func:`embedkit.data.render.render_pair` (prompt cut from the left to fit the encoder's
    ``max_seq_length``). A row's ``score``, when the batch carries scores, is that row's margin; otherwise
    every row uses ``margin``.

    Under ``torchrun`` it trains as one process on the concatenated batch. The Bradley-Terry loss is a mean over
    rows: with the equal batches ``fit`` gives every rank, the mean of the ranks' means, and of their gradients as
    ``fit`` averages them, is that of the whole batch. The contrastive term scores each rank's anchors against the
    candidates of every rank (:func:`~embedkit.encoders.batching.embedded_from`). :meth:`setup` gives every rank
    the same starting head.

    Args:
        margin: constant reward margin ``m`` (``0``: plain Bradley-Terry).
        contrastive_weight: weight of the InfoNCE representation term (``0``: Bradley-Terry alone, no extra
            forward pass).
        temperature: temperature of the InfoNCE term.
        dim: representation size; ``None`` infers it at the first batch.

    Example:
        >>> objective = build_loss("reward-bt", contrastive_weight=0.1)
        >>> fit(encoder, read_examples("prefs.jsonl"), objective, FitSettings(output_dir="runs/rm"))
        >>> model = load_reward_model("runs/rm/final")  # fit saves the head beside the encoder
    """

    def __init__(
        self,
        margin: float = 0.0,
        contrastive_weight: float = 0.0,
        temperature: float = 0.05,
        dim: int | None = None,
    ) -> None:
        super().__init__()
        if contrastive_weight < 0:
            raise ConfigError(f"contrastive_weight must be >= 0, got {contrastive_weight}")
        self.margin = margin
        self.contrastive_weight = contrastive_weight
        self.head = RewardHead(dim)
        self.contrastive = InfoNCELoss(temperature=temperature)

    def setup(self, encoder: Encoder) -> None:
        """Size a lazy head for ``encoder``, give every rank the same head, and move it to the encoder's device.

        A lazy head is built here, before the optimizer is, from a fixed seed and without advancing the global
        generator, so that equal settings give equal heads in every run (left lazy, it would take its weights from
        the generator that ``fit`` seeds differently on each rank); the head module itself is kept, sized in place,
        since a dev evaluator may already hold it. A head sized at construction came from each
        process's own generator: every rank takes rank 0's. Idempotent.
        """
        if any(is_lazy(p) for p in self.head.parameters()):
            # the head object stays the same: a dev evaluator built before setup holds it
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(HEAD_SEED)
                self.head.linear = RewardHead(encoder.dim).linear
        # Through the CPU: a pickled GPU tensor would land on rank 0's device on every rank.
        state = {name: tensor.cpu() for name, tensor in self.head.state_dict().items()}
        self.head.load_state_dict(distributed.broadcast_object(state))
        self.head.to(encoder.device)

    def forward(self, encoder: Encoder, batch: TextBatch) -> Tensor:
        if batch.kind != Kind.PREFERENCE or len(batch.negatives) != 1:
            raise DataError(
                f"reward-bt needs preference rows (prompt, chosen, one rejected), got {batch.kind.value} rows "
                f"with {len(batch.negatives)} negatives"
            )
        b = len(batch)
        chosen = render_for(encoder, batch.anchors, batch.positives)
        rejected = render_for(encoder, batch.anchors, batch.negatives[0])
        representations = encoder([*chosen, *rejected])  # [2B, D]: one pass, each text its own dropout mask
        rewards = self.head(representations)
        margin = self.margin if batch.scores is None else batch.scores.to(rewards.device)
        loss = bradley_terry_loss(rewards[:b], rewards[b:], margin)
        if self.contrastive_weight > 0:
            second_view = encoder(chosen)  # [B, D]
            # [3B, D] in contrastive_batch's order: anchors, their positives, the hard negatives
            embeddings = torch.cat([representations[:b], second_view, representations[b:]])
            views = embedded_from(embeddings, contrastive_batch(chosen, rejected))
            loss = loss + self.contrastive_weight * self.contrastive(views)
        return loss

    def eval_options(self) -> dict[str, dict[str, object]]:
        """Preference dev sets are scored by the reward head being trained."""
        return {"preference": {"mode": "reward", "reward_head": self.head}}

    def save_heads(self, path: str | os.PathLike[str]) -> Path:
        """Write the reward head beside the model in folder ``path``: ``embedkit_heads/reward.*``."""
        return write_reward_head(self.head, Path(path))

    def extra_repr(self) -> str:
        return f"margin={self.margin}, contrastive_weight={self.contrastive_weight}"


LOSSES.register(
    "reward-bt",
    LossSpec(
        name="reward-bt",
        factory=RewardModelObjective,
        summary="reward model: Bradley-Terry on a scalar head (optional margin) + contrastive representation term",
        kinds=(Kind.PREFERENCE,),
        reference="Bradley and Terry, 1952; Wang et al., 2024, Secrets of RLHF in Large Language Models Part II",
    ),
)
