"""Corpora to index: a file, a BEIR folder, or a list in memory, read as :class:`Document` rows.

A corpus is read more than once (ids are checked before anything is encoded, a training sample is drawn
before the chunks are added), so :func:`as_corpus` returns a :class:`Corpus` that can be iterated again; a
file is re-read rather than held in memory.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, Union

from embedkit.data import read_rows
from embedkit.data.io import Cell
from embedkit.errors import DataError
from embedkit.types import JsonValue

ID_COLUMNS = ("_id", "id")
TEXT_COLUMN = "text"
TITLE_COLUMN = "title"
BEIR_CORPUS = "corpus.jsonl"
BLANK_TEXT = "a blank text: a query or document needs words (blank documents can be kept with --allow-blank)"


class Document(NamedTuple):
    """One corpus entry: its external id (``int`` or ``str``), the text to embed, and optional metadata."""

    id: int | str
    text: str
    metadata: Mapping[str, JsonValue] | None = None


CorpusItem = str | Document | tuple[int | str, str] | tuple[int | str, str, Mapping[str, JsonValue] | None] | Mapping[str, Cell]
"""One entry of an in-memory corpus: a text, a :class:`Document`, an ``(id, text[, metadata])`` tuple or a row."""

CorpusSource = Union["Corpus", str, os.PathLike[str], Sequence[CorpusItem]]
"""Everything :func:`as_corpus` reads: a :class:`Corpus`, a file or BEIR folder, or a list of items."""


class Corpus:
    """A re-iterable sequence of :class:`Document` rows; ``len`` counts them (one pass over a file)."""

    def __init__(self, rows: Callable[[], Iterator[Document]], name: str, size: int | None = None) -> None:
        self._rows = rows
        self.name = name
        self._size = size

    def __iter__(self) -> Iterator[Document]:
        return self._rows()

    def __len__(self) -> int:
        if self._size is None:
            self._size = sum(1 for _ in self._rows())
        return self._size


def as_corpus(corpus: CorpusSource, *, allow_blank: bool = False) -> Corpus:
    """A :class:`Corpus` from any of:

    - a file (jsonl, json, csv, tsv, parquet, txt; optionally gzipped) or a BEIR folder (its ``corpus.jsonl``):
      the id comes from ``_id`` or ``id`` (else the row number from 0), the text from ``text``, prefixed with
      ``title + " "`` when a non-empty ``title`` is there (as BEIR evaluations embed documents); every other
      column (the title included) becomes metadata;
    - a list of texts (ids ``0..n-1``);
    - a list of ``(id, text)`` or ``(id, text, metadata)`` tuples or :class:`Document` rows;
    - a list of dicts, read like the rows of a file.

    A blank text (empty or whitespace only, after the title) is refused unless ``allow_blank``: it is most often a
    wrong column or a stray line, it would be found by no query, and in a text file, whose ids are positions,
    skipping it would shift the id of every document after it. Benchmark collections do hold a few empty
    documents (Cranfield has two), which evaluations keep as they are, with ``allow_blank=True``; a text
    file's blank lines are then documents too, so that ids stay line positions.

    Raises:
        DataError: a missing file, or (when the rows are read) a row without a text or with a blank one; names
            file and line (or the item's position in a list).
    """
    if isinstance(corpus, Corpus):
        return corpus
    if isinstance(corpus, str | os.PathLike):
        path = Path(corpus)
        if path.is_dir():
            path = path / BEIR_CORPUS
            if not path.is_file():
                raise DataError(f"a corpus folder must hold {BEIR_CORPUS} (BEIR layout)", str(corpus))
        read_rows(path)  # fails now, not on first use, when the file is missing or its format unknown
        return Corpus(lambda: _file_rows(path, allow_blank), str(path))
    if isinstance(corpus, Iterable) and not isinstance(corpus, Sequence):
        corpus = list(corpus)  # a generator can be read once only
    if not isinstance(corpus, Sequence):
        raise DataError(
            f"a corpus must be a path or a list of texts, (id, text) pairs or dicts, got {type(corpus).__name__}"
        )
    return Corpus(lambda: _list_rows(corpus, allow_blank), "corpus", size=len(corpus))


def _file_rows(path: Path, allow_blank: bool) -> Iterator[Document]:
    # a text file's blank lines are rows too, so that a document's id is its line's position either way
    for position, (line, row) in enumerate(read_rows(path, keep_blank_lines=True)):
        yield _row_document(row, position, str(path), line, allow_blank)


def _list_rows(items: Sequence[CorpusItem], allow_blank: bool) -> Iterator[Document]:
    for position, item in enumerate(items):
        if isinstance(item, Mapping):
            yield _row_document(item, position, "corpus", position + 1, allow_blank)
            continue
        document = _item_document(item, position)
        if not (allow_blank or document.text.strip()):
            raise DataError(f"corpus item {position}: {BLANK_TEXT}")
        yield document


def _item_document(item: CorpusItem, position: int) -> Document:
    """The document of a text or an ``(id, text[, metadata])`` tuple at ``position`` of an in-memory corpus."""
    if isinstance(item, str):
        return Document(position, item)
    if not (isinstance(item, tuple) and len(item) in (2, 3)):
        raise DataError(
            f"corpus item {position}: expected a text, an (id, text[, metadata]) tuple or a dict, got {item!r:.80}"
        )
    document = Document(*item)
    if not isinstance(document.text, str):
        raise DataError(f"corpus item {position}: the text must be a string, got {type(document.text).__name__}")
    if document.metadata is not None and not isinstance(document.metadata, Mapping):
        raise DataError(f"corpus item {position}: metadata must be a dict, got {type(document.metadata).__name__}")
    return document


def _row_document(row: Mapping[str, Cell], position: int, name: str, line: int, allow_blank: bool) -> Document:
    text = row.get(TEXT_COLUMN)
    if not isinstance(text, str):
        raise DataError(f"column {TEXT_COLUMN!r} is missing or not a string", name, line)
    id_column = next((column for column in ID_COLUMNS if column in row), None)
    external = position if id_column is None else row[id_column]
    title = row.get(TITLE_COLUMN)
    if isinstance(title, str) and title:
        text = f"{title} {text}"
    if not (allow_blank or text.strip()):
        raise DataError(BLANK_TEXT, name, line)
    metadata = {key: value for key, value in row.items() if key != TEXT_COLUMN and key != id_column}
    return Document(external, text, metadata or None)


def batched(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    """Consecutive lists of at most ``size`` documents."""
    iterator = iter(documents)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
