"""The escape hatch of the score-table design: objectives that need the encoder and the tokens.

Most losses take embeddings (``loss(EmbeddedBatch) -> scalar``). A few cannot: DiffCSE's replaced-token
detection reads the token ids, DCLR optimises noise negatives by gradient ascent, a guide model must embed
the same texts. Those subclass :class:`Objective` and :func:`embedkit.fit` calls them with the encoder and the
text batch instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor, nn

from embedkit.types import TextBatch

if TYPE_CHECKING:
    from embedkit.encoders import Encoder


class Objective(nn.Module):
    """``objective(encoder, batch) -> scalar``: a training objective with access to the model and the texts.

    The trainer runs it under the encoder's autocast; implementations compute their reductions in float32.
    Parameters of the objective (heads, discriminators) are trained with the encoder; frozen parts should set
    ``requires_grad=False`` and are then neither optimised nor checkpointed.
    """

    def setup(self, encoder: Encoder) -> None:
        """Called by :func:`embedkit.fit` once, before the optimizer is built and before a checkpoint is
        loaded: objectives that copy or inspect the encoder (a discriminator initialised from it, a frozen
        complementary copy of its starting weights) create those parts here. Must be idempotent."""

    def save_heads(self, path: str | os.PathLike[str]) -> Path | None:
        """Write the trained parts this objective adds to the model (a reward head, DiffCSE's discriminator)
        into the saved model folder ``path``; :func:`embedkit.fit` calls it for every model it saves. Objectives
        without such parts write nothing and return ``None``."""
        return None

    def eval_options(self) -> dict[str, dict[str, object]]:
        """Options this objective adds to the dev evaluators a recipe names, by evaluator name (``{"preference":
        {"mode": "reward", "reward_head": head}}`` for a reward model); none by default."""
        return {}

    def forward(self, encoder: Encoder, batch: TextBatch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
