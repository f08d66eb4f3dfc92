"""Data: reading files and Hugging Face datasets into :class:`Example` rows, and collating them into batches."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from embedkit.data.beir import beir_pairs, is_beir_folder, read_beir, split_queries
from embedkit.data.collate import ColumnPrompts, collate
from embedkit.data.io import FORMATS, Row, read_rows
from embedkit.data.kinds import KIND_COLUMNS, as_kind, infer_kind, remap, to_example
from embedkit.errors import ConfigError, DataError
from embedkit.types import Example, Kind

__all__ = [
    "FORMATS",
    "KIND_COLUMNS",
    "ColumnPrompts",
    "Example",
    "Examples",
    "Kind",
    "as_examples",
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


class DataFrameLike(Protocol):
    """A pandas ``DataFrame``: named ``columns`` and ``to_dict(orient="records")``."""

    columns: Sequence[str]

    def to_dict(self, orient: str) -> list[dict[str, object]]: ...


Table = Sequence[Mapping[str, object]] | DataFrameLike
"""Rows already in memory: a list of dicts, a Hugging Face ``datasets.Dataset`` (a sequence of dicts) or a pandas
``DataFrame``."""


def table_rows(table: Table) -> Iterator[tuple[int, Row]]:
    """``(row number from 1, row)`` of an in-memory table; rows that are not mappings are a :class:`DataError`."""
    # a DataFrame iterates over its column names; a datasets.Dataset and a list over their rows
    records = table.to_dict(orient="records") if hasattr(table, "columns") else table
    name = f"<{type(table).__name__}>"
    for number, row in enumerate(records, start=1):
        if not isinstance(row, Mapping):
            raise DataError(f"row {number} is a {type(row).__name__}, not a mapping of columns", name)
        yield number, dict(row)


def read_examples(
    path: str | os.PathLike[str] | Table,
    kind: Kind | str | None = None,
    columns: Mapping[str, str] | None = None,
    format: str | None = None,
    split: str = "train",
    limit: int | None = None,
    min_relevance: int = 1,
) -> Examples:
    """The examples of a file, a BEIR folder, a Hugging Face dataset (see :func:`read_rows` for files) or rows
already in memory (a list of dicts, a ``datasets.Dataset``, a pandas ``DataFrame``), columns mapped alike.

    A BEIR folder gives the (query, relevant document) pairs its ``split`` judges (see
    :func:`~embedkit.data.beir.beir_pairs`), of kind pairs.

    Args:
        path: the file, a BEIR folder, a Hugging Face dataset name, or an in-memory :data:`Table`.
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
    in_memory = not isinstance(path, (str, os.PathLike))
    name = f"<{type(path).__name__}>" if in_memory else str(path)
    if not in_memory and is_beir_folder(path):
        if wanted not in (None, Kind.PAIRS):
            raise ConfigError(f"{name} is a BEIR folder: its rows are (query, document) pairs, not {wanted.value}")
        return Examples(beir_pairs(path, split, min_relevance)[:limit], Kind.PAIRS)
    examples = []
    rows = table_rows(path) if in_memory else read_rows(path, format=format, split=split)
    for line, row in itertools.islice(rows, limit):
        if wanted is None:
            wanted = infer_kind(remap(row, columns), path=name, line=line)
        examples.append(to_example(row, wanted, name, line, columns))
    if not examples or wanted is None:
        raise DataError("no rows", name)
    return Examples(examples, wanted)


def as_examples(rows: Sequence[Example] | Table, kind: Kind | str | None = None) -> Sequence[Example]:
    """``rows`` as they are when they are :class:`Example` rows, else the examples of an in-memory table."""
    if isinstance(rows, Examples) or (isinstance(rows, Sequence) and rows and isinstance(rows[0], Example)):
        return rows
    return read_examples(rows, kind=kind)
