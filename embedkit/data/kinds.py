"""One adapter per data kind: a row dict becomes an :class:`~embedkit.types.Example`.

Errors name the file, the line and the column (as the file spells it when the column was remapped).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from embedkit.data.io import Cell, Row
from embedkit.errors import DataError, UnknownNameError
from embedkit.types import Example, Kind

KIND_COLUMNS: dict[Kind, tuple[tuple[str, ...], ...]] = {
    Kind.SENTENCES: (("text",),),
    Kind.PAIRS: (("anchor", "positive"),),
    Kind.TRIPLETS: (("anchor", "positive", "negative"), ("anchor", "positive", "negatives")),
    Kind.SCORED: (("sentence1", "sentence2", "score"),),
    Kind.PREFERENCE: (("prompt", "chosen", "rejected"),),
}
"""The canonical columns of each kind; a kind with several tuples accepts any one of them. Preference rows may also
carry a ``margin`` (how strongly chosen beats rejected), read into :attr:`Example.score`."""


def as_kind(kind: Kind | str) -> Kind:
    """``kind`` as a :class:`Kind`; an unknown name raises :class:`UnknownNameError` listing the kinds."""
    try:
        return Kind(kind)
    except ValueError:
        raise UnknownNameError("data kind", str(kind), [known.value for known in Kind]) from None


def remap(row: Mapping[str, Cell], columns: Mapping[str, str] | None) -> Row:
    """``row`` with its columns renamed by ``columns`` (file column -> canonical column).

    A canonical name that is the target of a mapping is taken only from its mapped column, never from a file
    column that happens to carry the same name, so that a mapping always means what it says.
    """
    if not columns:
        return dict(row)
    targets = set(columns.values())
    renamed = {name: value for name, value in row.items() if name not in columns and name not in targets}
    renamed.update({columns[name]: value for name, value in row.items() if name in columns})
    return renamed


def infer_kind(columns: Iterable[str], *, path: str | None = None, line: int | None = None) -> Kind:
    """The one kind whose canonical columns are all among ``columns`` (extra columns are fine).

    Raises:
        DataError: no kind or several kinds fit; the message lists the expected column sets.
    """
    present = set(columns)
    fits = [kind for kind, options in KIND_COLUMNS.items() if any(set(option) <= present for option in options)]
    if Kind.TRIPLETS in fits:
        fits.remove(Kind.PAIRS)  # every triplet row also holds a pair
    if len(fits) == 1:
        return fits[0]
    found = ", ".join(sorted(present)) or "none"
    problem = f"fit several kinds ({', '.join(kind.value for kind in fits)})" if fits else "fit no kind"
    message = f"cannot infer the data kind: the columns ({found}) {problem}; expected {_expected_columns()}"
    raise DataError(f"{message}; pass kind= or remap the columns", path, line)


def _expected_columns() -> str:
    def one_kind(kind: Kind, options: tuple[tuple[str, ...], ...]) -> str:
        return f"{kind.value} " + " or ".join("{" + ", ".join(option) + "}" for option in options)

    return "; ".join(one_kind(kind, options) for kind, options in KIND_COLUMNS.items())


def to_example(
    row: Mapping[str, Cell], kind: Kind, path: str, line: int, columns: Mapping[str, str] | None = None
) -> Example:
    """The :class:`Example` of one row of ``kind``, with ``source=(path, line)``.

    ``columns`` renames the row's columns first (see :func:`remap`). Every text must be a string that is not
    blank, except the replies of the preference kind, which must only be strings; texts are kept unstripped.

    Raises:
        DataError: a missing column, a text that is not a non-blank string, or a score that is not a finite
            number; the message names ``path:line`` and the column.
    """
    original = {canonical: name for name, canonical in (columns or {}).items()}
    return _ADAPTERS[kind](_Row(remap(row, columns), original, path, line))


@dataclass(frozen=True)
class _Row:
    """A remapped row with what its error messages need."""

    values: Row
    original: Mapping[str, str]  # canonical column -> the file's column, for remapped columns
    path: str
    line: int

    @property
    def source(self) -> tuple[str, int]:
        return self.path, self.line

    def error(self, message: str) -> DataError:
        return DataError(message, self.path, self.line)

    def label(self, column: str) -> str:
        """The column as the file names it."""
        original = self.original.get(column)
        return repr(column) if original is None else f"{original!r} (mapped to {column!r})"

    def get(self, column: str) -> Cell:
        if column not in self.values:
            raise self.error(f"missing column {self.label(column)}")
        return self.values[column]

    def text(self, column: str, allow_blank: bool = False) -> str:
        return self.checked_text(self.get(column), self.label(column), allow_blank)

    def checked_text(self, value: object, label: str, allow_blank: bool = False) -> str:
        if not isinstance(value, str):
            raise self.error(f"column {label} must be a string, got {type(value).__name__}")
        if not allow_blank and not value.strip():
            raise self.error(f"column {label} is empty or only whitespace")
        return value


def _sentences(row: _Row) -> Example:
    text = row.text("text")
    return Example(anchor=text, positive=text, source=row.source)


def _pairs(row: _Row) -> Example:
    return Example(anchor=row.text("anchor"), positive=row.text("positive"), source=row.source)


def _triplets(row: _Row) -> Example:
    return Example(
        anchor=row.text("anchor"), positive=row.text("positive"), negatives=_negatives(row), source=row.source
    )


def _negatives(row: _Row) -> tuple[str, ...]:
    has_one, has_many = "negative" in row.values, "negatives" in row.values
    if has_one and has_many:
        raise row.error(f"give either column {row.label('negative')} or {row.label('negatives')}, not both")
    if not has_many:
        if not has_one:
            raise row.error(f"missing column {row.label('negative')} (or {row.label('negatives')})")
        return (row.text("negative"),)
    values, label = row.values["negatives"], row.label("negatives")
    if not isinstance(values, list | tuple) or not values:
        raise row.error(f"column {label} must be a non-empty list of strings")
    return tuple(row.checked_text(value, f"{label}[{index}]") for index, value in enumerate(values))


def _scored(row: _Row) -> Example:
    return Example(anchor=row.text("sentence1"), positive=row.text("sentence2"), score=_score(row), source=row.source)


def _score(row: _Row, column: str = "score") -> float:
    value = row.get(column)
    problem = f"column {row.label(column)} must be a finite number, got {value!r}"
    # bool is a numbers.Real, but True as a similarity score is a mistake in the file
    if isinstance(value, bool) or not isinstance(value, numbers.Real | str):
        raise row.error(problem)
    try:
        score = float(value)
    except ValueError:
        raise row.error(problem) from None
    if not math.isfinite(score):
        raise row.error(problem)
    return score


def _preference(row: _Row) -> Example:
    # a blank reply is a real answer in preference data (hh-rlhf has chosen replies that are a single space)
    return Example(
        anchor=row.text("prompt"),
        positive=row.text("chosen", allow_blank=True),
        negatives=(row.text("rejected", allow_blank=True),),
        score=_score(row, "margin") if "margin" in row.values else None,
        source=row.source,
    )


_ADAPTERS: dict[Kind, Callable[[_Row], Example]] = {
    Kind.SENTENCES: _sentences,
    Kind.PAIRS: _pairs,
    Kind.TRIPLETS: _triplets,
    Kind.SCORED: _scored,
    Kind.PREFERENCE: _preference,
}
