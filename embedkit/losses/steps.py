"""Steps over a score table: ``Scores -> Scores``.

A step only shrinks the ``valid`` mask or changes ``log_weights``; it never touches a row's target. The same
steps run in-batch during training and offline when mining hard negatives from an index, so every filter
rule is written once, here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from embedkit.errors import ConfigError
from embedkit.types import Scores


class Step(Protocol):
    """A transformation of a score table that keeps every row's target valid."""

    def __call__(self, scores: Scores) -> Scores: ...


class MaskDuplicates:
    """Never use a candidate that has the same text as the row's anchor or positive as a negative.

    In a batch of unsupervised sentences the same sentence may occur twice; without this step the second copy
    would be a negative of the first, pushing apart two identical texts. Needs the group ids that
    :func:`embedkit.data.collate` assigns (one id per distinct text).
    """

    def __call__(self, scores: Scores) -> Scores:
        if scores.anchor_groups is None or scores.candidate_groups is None:
            raise ConfigError("MaskDuplicates needs anchor_groups and candidate_groups in the score table")
        positive_groups = scores.candidate_groups[scores.targets]  # [B]
        candidates = scores.candidate_groups[None, :]  # [1, C]
        same_text = (candidates == scores.anchor_groups[:, None]) | (candidates == positive_groups[:, None])
        drop = same_text & ~scores.target_mask()
        return scores.replace(valid=scores.valid & ~drop)


def apply_steps(scores: Scores, steps: Sequence[Step]) -> Scores:
    """Run ``steps`` left to right."""
    for step in steps:
        scores = step(scores)
    return scores
