"""Reading rows from files (jsonl, json, csv, tsv, txt, parquet, optionally gzipped) and Hugging Face datasets.

Every reader yields ``(line, row)``: ``line`` is the 1-based physical line of the row in its file (the row
index + 1 for parquet and Hugging Face datasets) and ``row`` is a dict of column values.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from embedkit.errors import DataError, UnknownNameError
from embedkit.hub import hub_reachable
from embedkit.types import JsonValue

# A cell is whatever its format holds: a JSON value, a CSV/TSV string, or what Arrow gives back for a parquet or
# Hugging Face column (datetimes, bytes, nested lists). Code that reads a column checks its type there.
Cell = Any
Row = dict[str, Cell]
Rows = Iterator[tuple[int, Row]]

FORMATS = ("jsonl", "json", "csv", "tsv", "txt", "parquet")
HF_PREFIX = "hf:"
_HF_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def read_rows(
    path: str | os.PathLike[str], format: str | None = None, split: str = "train", *, keep_blank_lines: bool = False
) -> Rows:
    """Rows of a file or of a Hugging Face dataset.

    Args:
        path: a file path; ``"hf:org/name"``, or ``"org/name"`` when no such file exists, names a Hugging Face
            dataset (read with the optional ``datasets`` package). ``"hf:org/name:config"`` names one of its
            configs (subsets), as ``datasets.load_dataset("org/name", "config")`` does: a hub repository id holds
            no ``:``, so the config cannot be taken for part of the name, and the ``hf:`` prefix, which a config
            needs, keeps it from being taken for a path.
        format: one of :data:`FORMATS`; inferred from the suffix (after an optional ``.gz``) when ``None``.
        split: the split of a Hugging Face dataset; ignored for files.
        keep_blank_lines: a txt file's blank lines are skipped, unless this is set: then each one before the last
            text is a row too (its text blank), for readers whose rows must line up with the file's lines.

    Raises:
        DataError: the file is missing or unreadable, its format is unknown, or a row is malformed (the message
            starts with ``path:line:``). Errors about a row, or a byte that is not UTF-8, are raised when that row
            is reached.
        UnknownNameError: ``format`` is not one of :data:`FORMATS`.
    """
    name = str(path)
    if isinstance(path, str) and is_hf_name(path):
        return _read_hf(name, split)
    file = Path(path)
    if not file.exists():
        raise DataError("no such file", name)
    if not file.is_file():
        raise DataError("not a file", name)
    kind = _format_of(file, name) if format is None else _checked_format(format)
    if kind == "txt":
        return _read_txt(file, name, keep_blank_lines=keep_blank_lines)
    return _READERS[kind](file, name)


def is_hf_name(name: str) -> bool:
    """Whether the string ``name`` names a Hugging Face dataset rather than a local file."""
    if name.startswith(HF_PREFIX):
        return True
    # a missing local file such as "data/train.jsonl" must still be reported as missing, not looked up online
    return _HF_NAME.fullmatch(name) is not None and not _has_known_suffix(name) and not Path(name).exists()


def _has_known_suffix(name: str) -> bool:
    suffixes = Path(name.removesuffix(".gz")).suffixes
    return bool(suffixes) and suffixes[-1].lstrip(".").lower() in FORMATS


def _format_of(file: Path, name: str) -> str:
    stem = file.name.removesuffix(".gz")
    suffix = Path(stem).suffix.lstrip(".").lower()
    if suffix not in FORMATS:
        raise DataError(
            f"cannot tell the format from the file name {file.name!r}; supported formats: "
            f"{', '.join(FORMATS)} (optionally gzipped, e.g. .jsonl.gz); pass format= to choose one",
            name,
        )
    return suffix


def _checked_format(format: str) -> str:
    if format not in FORMATS:
        raise UnknownNameError("format", format, FORMATS)
    return format


def _open_text(file: Path, newline: str) -> IO[str]:
    """Open ``file`` as UTF-8 text (a leading BOM dropped), through gzip when its name ends in ``.gz``."""
    if file.name.endswith(".gz"):
        return gzip.open(file, "rt", encoding="utf-8-sig", newline=newline)
    return open(file, encoding="utf-8-sig", newline=newline)


def _guarded(reader: Callable[..., Rows]) -> Callable[..., Rows]:
    """Turn the I/O and decoding errors of ``reader`` into a :class:`DataError` naming the file (and, for a byte
    that is not UTF-8, its line)."""

    def guarded(file: Path, name: str, **options: bool) -> Rows:
        try:
            yield from reader(file, name, **options)
        except UnicodeDecodeError as error:
            # the decoder saw a block of the file, so its position says nothing about lines: find the line again
            line, reason = _undecodable_line(file) or (None, str(error))
            raise DataError(f"not UTF-8 text: {reason}", name, line) from error
        except (OSError, EOFError) as error:
            raise DataError(f"cannot read: {error}", name) from error

    return guarded


def _undecodable_line(file: Path) -> tuple[int, str] | None:
    """The first line of ``file`` that is not UTF-8, and which byte of it; read line by line, as bytes (a
    newline byte never occurs inside a UTF-8 character)."""
    opener = gzip.open if file.name.endswith(".gz") else open
    with opener(file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return number, f"byte {error.start + 1} of the line (0x{raw[error.start]:02x}): {error.reason}"
    return None


def _lines(file: Path) -> Iterator[tuple[int, str]]:
    """Physical lines split on ``\\n`` only, without their ``\\n`` or ``\\r\\n`` ending."""
    with _open_text(file, newline="\n") as handle:
        for number, line in enumerate(handle, start=1):
            yield number, line.removesuffix("\n").removesuffix("\r")


@_guarded
def _read_jsonl(file: Path, name: str) -> Rows:
    yield from _json_lines(_lines(file), name)


def _json_lines(lines: Iterable[tuple[int, str]], name: str) -> Rows:
    for number, line in lines:
        if line.strip():
            yield number, _object(_parse_json(line, name, number), name, number)


def _parse_json(text: str, name: str, line: int) -> JsonValue:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"invalid JSON: {error.msg} (column {error.colno})", name, line) from None


def _object(value: JsonValue, name: str, line: int) -> Row:
    if not isinstance(value, dict):
        raise DataError(f"expected a JSON object, got {type(value).__name__}", name, line)
    return value


@_guarded
def _read_json(file: Path, name: str) -> Rows:
    """A ``.json`` file holding one list of objects; a file that does not start with ``[`` is read as JSON lines."""
    with _open_text(file, newline="") as handle:
        text = handle.read()
    if text.lstrip().startswith("["):
        yield from _json_array(text, name)
    else:
        yield from _json_lines(enumerate(text.split("\n"), start=1), name)


def _json_array(text: str, name: str) -> Rows:
    """The elements of the JSON array ``text``, each with the line it starts on."""
    line_starts = [0, *(match.end() for match in re.finditer("\n", text))]

    def line_of(position: int) -> int:
        return bisect.bisect_right(line_starts, position)

    decoder = json.JSONDecoder()
    position = _skip_space(text, text.index("[") + 1)
    closed = text.startswith("]", position)
    while not closed:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise DataError(f"invalid JSON: {error.msg} (column {error.colno})", name, error.lineno) from None
        yield line_of(position), _object(value, name, line_of(position))
        position = _skip_space(text, end)
        closed = text.startswith("]", position)
        if not closed:
            if not text.startswith(",", position):
                raise DataError("invalid JSON: expected ',' or ']' after an element", name, line_of(position))
            position = _skip_space(text, position + 1)
    rest = _skip_space(text, position + 1)
    if rest < len(text):
        raise DataError("invalid JSON: extra data after the array", name, line_of(rest))


def _skip_space(text: str, position: int) -> int:
    return _JSON_SPACE.match(text, position).end()  # type: ignore[union-attr]  # matches the empty string


def _delimited(format: str, delimiter: str, quoted: bool) -> Callable[[Path, str], Rows]:
    """A reader of delimited text with a header row; ``quoted`` says whether double quotes delimit fields."""

    @_guarded
    def read(file: Path, name: str) -> Rows:
        with _open_text(file, newline="") as handle:
            if quoted:
                records = csv.reader(handle, delimiter=delimiter, strict=True)
            else:
                records = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE, strict=True)
            header: list[str] | None = None
            while True:
                # a quoted field may span lines, so a record starts right after the previous one ended
                start = records.line_num + 1
                try:
                    fields = next(records, None)
                except csv.Error as error:
                    raise DataError(f"malformed {format} record: {error}", name, start) from None
                if fields is None:
                    return
                if not fields:
                    continue
                if header is None:
                    header = _header(fields, name, start)
                    continue
                if len(fields) != len(header):
                    message = f"expected {len(header)} fields as in the header, got {len(fields)}"
                    raise DataError(message, name, start)
                yield start, dict(zip(header, fields, strict=True))

    return read


def _header(fields: list[str], name: str, line: int) -> list[str]:
    duplicates = sorted({field for field in fields if fields.count(field) > 1})
    if duplicates:
        raise DataError(f"duplicate column names in the header: {', '.join(duplicates)}", name, line)
    return fields


@_guarded
def _read_txt(file: Path, name: str, keep_blank_lines: bool = False) -> Rows:
    """One row per non-blank line; with ``keep_blank_lines``, also the blank lines that precede a text."""
    blank: list[tuple[int, str]] = []  # blank lines not yet followed by a text
    for number, line in _lines(file):
        if not line.strip():
            blank.append((number, line))
            continue
        if keep_blank_lines:
            yield from ((blank_number, {"text": text}) for blank_number, text in blank)
        blank.clear()
        yield number, {"text": line}


def _read_parquet(file: Path, name: str) -> Rows:
    import pyarrow
    from pyarrow import parquet

    try:
        batches = parquet.ParquetFile(file).iter_batches()
        number = 0
        for batch in batches:
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (pyarrow.ArrowException, OSError) as error:
        raise DataError(f"cannot read parquet: {error}", name) from error


def _hf_dataset(name: str) -> tuple[str, str | None]:
    """``(dataset, config)`` of a Hugging Face name: ``"hf:org/name:config"`` -> ``("org/name", "config")``;
    ``"hf:org/name"`` and a guessed ``"org/name"`` have no config (``None``).

    Raises:
        DataError: an empty dataset or config name (``"hf:"``, ``"hf:org/name:"``).
    """
    if not name.startswith(HF_PREFIX):
        return name, None
    dataset, colon, config = name.removeprefix(HF_PREFIX).partition(":")
    if not dataset or (colon and not config):
        raise DataError(f"a Hugging Face dataset is named {HF_PREFIX}org/name or {HF_PREFIX}org/name:config", name)
    return dataset, config or None


def _read_hf(name: str, split: str) -> Rows:
    """Rows of a Hugging Face dataset, loaded eagerly so that a missing dataset fails at once.

    A name without the ``hf:`` prefix is only a guess at a dataset: it may as well be a mistyped file, so when no
    dataset loads, the error says first that there is no such file.
    """
    dataset_name, config = _hf_dataset(name)
    guessed = not name.startswith(HF_PREFIX)
    try:
        import datasets
    except ImportError:
        message = "reading a Hugging Face dataset needs the datasets package: pip install 'embedkit[hf]'"
        raise DataError(f"no such file ({message})" if guessed else message, name) from None
    if guessed and not hub_reachable():
        # the hub's clients would retry for a minute before saying what is plain now
        raise DataError(f"no such file (and the Hugging Face hub cannot be reached; {HF_PREFIX}NAME reads a cached "
                        "dataset)", name)
    try:
        dataset = datasets.load_dataset(dataset_name, name=config, split=split)
    except Exception as error:  # datasets fails in many ways (offline, not found, no such split); all are one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        which = f"split {split!r}" if config is None else f"config {config!r}, split {split!r}"
        if guessed:
            message = f"no such file, and no Hugging Face dataset of that name loads ({which}): {reason}"
        else:
            message = f"cannot load Hugging Face dataset ({which}): {reason}"
        raise DataError(message, name) from error
    return ((index + 1, dict(row)) for index, row in enumerate(dataset))


# the readers of every format but txt, whose reader takes keep_blank_lines too
_READERS: dict[str, Callable[[Path, str], Rows]] = {
    "jsonl": _read_jsonl,
    "json": _read_json,
    # tsv files rarely quote and often hold stray quote characters, so quotes are kept as text
    "tsv": _delimited("tsv", "\t", quoted=False),
    "csv": _delimited("csv", ",", quoted=True),
    "parquet": _read_parquet,
}
