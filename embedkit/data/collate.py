"""Collating :class:`~embedkit.types.Example` rows into one :class:`~embedkit.types.TextBatch`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from embedkit.errors import DataError
from embedkit.types import Example, Kind, TextBatch


def collate(examples: Sequence[Example], kind: Kind) -> TextBatch:
    """One batch of ``examples``: candidates are the positives, then the negatives column by column.

    Every text gets the id :func:`text_id` gives it, so that rows sharing a text share a group and never serve
    as each other's negatives, also across processes and against texts kept from earlier batches (a memory
    queue), since the id depends on the text alone.

    Raises:
        ValueError: ``examples`` is empty.
        DataError: the rows do not all have the same number of negatives; names the first row that differs.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    width = _negative_count(examples)
    anchors = [example.anchor for example in examples]
    positives = [example.positive for example in examples]
    negatives = [[example.negatives[column] for example in examples] for column in range(width)]
    anchor_groups = text_ids(anchors)
    candidate_groups = text_ids([*positives, *(text for column in negatives for text in column)])
    return TextBatch(
        kind=kind,
        anchors=anchors,
        positives=positives,
        negatives=negatives,
        scores=_scores(examples),
        anchor_groups=anchor_groups,
        candidate_groups=candidate_groups,
    )


def _negative_count(examples: Sequence[Example]) -> int:
    width = len(examples[0].negatives)
    for example in examples:
        if len(example.negatives) != width:
            path, line = example.source or (None, None)
            message = f"a row with {len(example.negatives)} negatives in a batch whose first row has {width}"
            raise DataError(f"{message}; every row of a batch needs the same number of negatives", path, line)
    return width


def text_id(text: str) -> int:
    """A stable signed 64-bit id of ``text`` (BLAKE2b): equal texts get equal ids in every process and run."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def text_ids(texts: Sequence[str]) -> torch.Tensor:
    """``[len(texts)]`` long: :func:`text_id` of each text."""
    return torch.tensor([text_id(text) for text in texts], dtype=torch.long)


def _scores(examples: Sequence[Example]) -> torch.Tensor | None:
    scores = [example.score for example in examples]
    if any(score is None for score in scores):
        return None
    return torch.tensor(scores, dtype=torch.float32)
