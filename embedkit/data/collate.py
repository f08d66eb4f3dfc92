"""Collating :class:`~embedkit.types.Example` rows into one :class:`~embedkit.types.TextBatch`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedkit.types import PADDING_GROUP, Example, Kind, TextBatch

if TYPE_CHECKING:  # imported where used: reading data does not load torch
    import torch


@dataclass(frozen=True)
class ColumnPrompts:
    """The prompts put before the texts of each column in training (see :mod:`embedkit.encoders.prompts`).

    ``None`` leaves a column to the model's own prompt: the anchor gets its query prompt, the positive its
    document prompt, and the negatives the positive's prompt (:func:`embedkit.training.fit.column_prompts`).
    """

    anchor: str | None = None
    positive: str | None = None
    negative: str | None = None


def collate(examples: Sequence[Example], kind: Kind, prompts: ColumnPrompts | None = None) -> TextBatch:
    """One batch of ``examples``: candidates are the positives, then the negatives column by column.

    Every text gets the id :func:`text_id` gives it, so that rows sharing a text share a group and never serve
    as each other's negatives, also across processes and against texts kept from earlier batches (a memory
    queue), since the id depends on the text alone. Rows with fewer negatives than the widest row (mined rows
    for which no negative survived the filters) are padded with empty texts in :data:`PADDING_GROUP`, which no
    loss scores: such rows train on in-batch negatives alone.

    Each column's texts get its prompt of ``prompts`` in front (a column whose prompt is ``None``, none); the
    group ids stay those of the texts without prompts, so that a text is the same item in every column.

    Raises:
        ValueError: ``examples`` is empty.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    import torch

    prompts = prompts or ColumnPrompts()
    width = max(len(example.negatives) for example in examples)
    anchors = [example.anchor for example in examples]
    positives = [example.positive for example in examples]
    anchor_groups = text_ids(anchors)
    candidate_groups = torch.cat([
        text_ids(positives),
        *(_negative_ids(examples, column) for column in range(width)),
    ])
    negatives = [[_negative(example, column, prompts.negative) for example in examples] for column in range(width)]
    return TextBatch(
        kind=kind,
        anchors=_prompted(anchors, prompts.anchor),
        positives=_prompted(positives, prompts.positive),
        negatives=negatives,
        scores=_scores(examples),
        anchor_groups=anchor_groups,
        candidate_groups=candidate_groups,
    )


def _prompted(texts: list[str], prompt: str | None) -> list[str]:
    return [prompt + text for text in texts] if prompt else texts


def _negative(example: Example, column: int, prompt: str | None) -> str:
    """Row ``example``'s negative of ``column`` after ``prompt``; padding (no such negative) stays empty."""
    return (prompt or "") + example.negatives[column] if column < len(example.negatives) else ""


def _negative_ids(examples: Sequence[Example], column: int) -> torch.Tensor:
    """``[B]`` group ids of one column of negatives, :data:`PADDING_GROUP` where a row has none."""
    import torch

    return torch.tensor(
        [text_id(e.negatives[column]) if column < len(e.negatives) else PADDING_GROUP for e in examples],
        dtype=torch.long,
    )


def text_id(text: str) -> int:
    """A stable signed 64-bit id of ``text`` (BLAKE2b): equal texts get equal ids in every process and run."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def longest_first(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """The positions of ``texts`` in batches of ``batch_size``, longest text first (ties in input order), so
    that each batch holds texts of similar length and pads little."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def text_ids(texts: Sequence[str]) -> torch.Tensor:
    """``[len(texts)]`` long: :func:`text_id` of each text."""
    import torch

    return torch.tensor([text_id(text) for text in texts], dtype=torch.long)


def _scores(examples: Sequence[Example]) -> torch.Tensor | None:
    import torch

    scores = [example.score for example in examples]
    if any(score is None for score in scores):
        return None
    return torch.tensor(scores, dtype=torch.float32)
