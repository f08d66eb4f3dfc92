"""Losses, found by name in :data:`LOSSES`.

Every loss is an ``nn.Module`` whose ``forward`` takes an :class:`~embedkit.types.EmbeddedBatch` and returns a
scalar, or an :class:`~embedkit.losses.objective.Objective` that takes the encoder and the text batch. A
:class:`LossSpec` says which data kinds the loss takes, where it comes from and which preset parameters it
has. Importing a loss module registers its losses. :func:`matryoshka` trains any embedding loss at several
leading-dimension cuts of the embeddings (Matryoshka Representation Learning).
"""

from __future__ import annotations

from embedkit.losses import infonce  # noqa: F401  (registers its losses)
from embedkit.losses.cosent import CoSENTLoss  # noqa: F401  (registers cosent)
from embedkit.losses.dclr import DCLRObjective  # noqa: F401  (registers dclr)
from embedkit.losses.debiased import DebiasedInfoNCELoss  # noqa: F401  (registers debiased-infonce)
from embedkit.losses.diffcse import DiffCSEObjective  # noqa: F401  (registers diffcse)
from embedkit.losses.gist import GISTEmbedObjective  # noqa: F401  (registers gist)
from embedkit.losses.infonce import InfoNCELoss, cosine_table, info_nce_from_scores
from embedkit.losses.matryoshka import MatryoshkaLoss, matryoshka
from embedkit.losses.objective import Objective
from embedkit.losses.preference import RewardModelObjective  # noqa: F401  (registers reward-bt)
from embedkit.losses.queue import MemoryQueue, MomentumQueueObjective  # noqa: F401  (registers infonce-queue)
from embedkit.losses.registry import LOSSES, LossSpec, build_loss
from embedkit.losses.steps import (
    STEPS,
    MarginFilter,
    MaskDuplicates,
    RankWindow,
    ScoreCeiling,
    Step,
    TopKHardest,
    apply_steps,
    build_steps,
)

__all__ = [
    "LOSSES",
    "STEPS",
    "InfoNCELoss",
    "LossSpec",
    "MarginFilter",
    "MaskDuplicates",
    "MatryoshkaLoss",
    "Objective",
    "RankWindow",
    "ScoreCeiling",
    "Step",
    "TopKHardest",
    "apply_steps",
    "build_loss",
    "build_steps",
    "cosine_table",
    "info_nce_from_scores",
    "matryoshka",
]
