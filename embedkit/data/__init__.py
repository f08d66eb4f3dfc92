"""Data: reading files and Hugging Face datasets into :class:`Example` rows, and collating them into batches."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping

from embedkit.data.beir import beir_pairs, is_beir_folder, read_beir, split_queries
from embedkit.data.collate import collate
from embedkit.data.io import FORMATS, read_rows
from embedkit.data.kinds import KIND_COLUMNS, as_kind, infer_kind, remap, to_example
from embedkit.errors import ConfigError, DataError
from embedkit.types import Example, Kind

__all__ = [
    "FORMATS",
    "KIND_COLUMNS",
    "Example",
    "Examples",
    "Kind",
    "as_kind",
    "beir_pairs",
    "collate",
    "infer_kind",
    "read_beir",
    "read_examples",
    "read_rows",
    "split_queries",
    "to_example",
]


class Examples(list[Example]):
    """A list of :class:`Example` rows that remembers their data kind."""

    def __init__(self, rows: list[Example], kind: Kind) -> None:
        super().__init__(rows)
        self.kind = kind


def read_examples(
    path: str | os.PathLike[str],
    kind: Kind | str | None = None,
    columns: Mapping[str, str] | None = None,
    format: str | None = None,
    split: str = "train",
    limit: int | None = None,
    min_relevance: int = 1,
) -> Examples:
    """The examples of a file, a BEIR folder or a Hugging Face dataset (see :func:`read_rows` for files).

    A BEIR folder gives the (query, relevant document) pairs its ``split`` judges (see
    :func:`~embedkit.data.beir.beir_pairs`), of kind pairs.

    Args:
        path: the file, a BEIR folder, or a Hugging Face dataset name.
        kind: the data kind; inferred from the columns of the first row when ``None``.
        columns: renames the file's columns to the kind's canonical names, e.g. ``{"premise": "anchor"}``.
        format: the file format; inferred from the suffix when ``None``.
        split: the split of a Hugging Face dataset or a BEIR folder.
        limit: read at most this many rows.
        min_relevance: BEIR folders: the lowest qrels score that makes a (query, document) pair.

    Raises:
        DataError: unreadable or malformed input, or no rows at all; the message names file and line.
        UnknownNameError: ``kind`` or ``format`` is not a known name.
        ConfigError: ``limit`` is below 1.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    wanted = None if kind is None else as_kind(kind)
    name = str(path)
    if is_beir_folder(path):
        if wanted not in (None, Kind.PAIRS):
            raise ConfigError(f"{name} is a BEIR folder: its rows are (query, document) pairs, not {wanted.value}")
        return Examples(beir_pairs(path, split, min_relevance)[:limit], Kind.PAIRS)
    examples = []
    for line, row in itertools.islice(read_rows(path, format=format, split=split), limit):
        if wanted is None:
            wanted = infer_kind(remap(row, columns), path=name, line=line)
        examples.append(to_example(row, wanted, name, line, columns))
    if not examples or wanted is None:
        raise DataError("no rows", name)
    return Examples(examples, wanted)
