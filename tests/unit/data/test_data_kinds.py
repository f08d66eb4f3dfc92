"""Tests of embedkit.data.kinds: one adapter per kind, remapping, kind inference and row errors."""

from __future__ import annotations

from typing import Any

import pytest

from embedkit.data.kinds import KIND_COLUMNS, as_kind, infer_kind, remap, to_example
from embedkit.errors import DataError, UnknownNameError
from embedkit.types import Example, Kind

PATH = "rows.jsonl"


def error_of(row: dict[str, Any], kind: Kind, columns: dict[str, str] | None = None) -> str:
    with pytest.raises(DataError) as caught:
        to_example(row, kind, PATH, 7, columns)
    return str(caught.value)


@pytest.mark.parametrize(
    ("kind", "row", "expected"),
    [
        (Kind.SENTENCES, {"text": " a cat "}, Example(" a cat ", " a cat ")),
        (Kind.PAIRS, {"anchor": "q", "positive": "d", "id": 3}, Example("q", "d")),
        (Kind.TRIPLETS, {"anchor": "q", "positive": "d", "negative": "n"}, Example("q", "d", ("n",))),
        (Kind.TRIPLETS, {"anchor": "q", "positive": "d", "negatives": ["n1", "n2"]}, Example("q", "d", ("n1", "n2"))),
        (Kind.SCORED, {"sentence1": "a", "sentence2": "b", "score": 4}, Example("a", "b", score=4.0)),
        (Kind.SCORED, {"sentence1": "a", "sentence2": "b", "score": " 2.5 "}, Example("a", "b", score=2.5)),
        (Kind.PREFERENCE, {"prompt": "p", "chosen": " yes", "rejected": " no"}, Example("p", " yes", (" no",))),
        (
            Kind.PREFERENCE,
            {"prompt": "p", "chosen": " yes", "rejected": " no", "margin": 1.5},
            Example("p", " yes", (" no",), score=1.5),
        ),
    ],
)
def test_each_kind_becomes_an_example_with_its_source(kind: Kind, row: dict[str, Any], expected: Example) -> None:
    example = to_example(row, kind, PATH, 7)
    assert example == expected
    assert example.source == (PATH, 7)
    assert isinstance(example.score, float | None)


def test_preference_replies_may_be_blank() -> None:
    example = to_example({"prompt": "p", "chosen": " ", "rejected": ""}, Kind.PREFERENCE, PATH, 7)
    assert (example.positive, example.negatives) == (" ", ("",))


@pytest.mark.parametrize(
    ("kind", "row", "column", "reason"),
    [
        (Kind.SENTENCES, {}, "'text'", "missing column"),
        (Kind.SENTENCES, {"text": ""}, "'text'", "empty"),
        (Kind.SENTENCES, {"text": " \t\n"}, "'text'", "empty"),
        (Kind.SENTENCES, {"text": None}, "'text'", "must be a string"),
        (Kind.PAIRS, {"anchor": "q"}, "'positive'", "missing column"),
        (Kind.PAIRS, {"anchor": 5, "positive": "d"}, "'anchor'", "must be a string"),
        (Kind.TRIPLETS, {"anchor": "q", "positive": "d"}, "'negative'", "missing column"),
        (Kind.TRIPLETS, {"anchor": "q", "positive": "d", "negative": " "}, "'negative'", "empty"),
        (Kind.TRIPLETS, {"anchor": "q", "positive": "d", "negatives": []}, "'negatives'", "non-empty list"),
        (Kind.TRIPLETS, {"anchor": "q", "positive": "d", "negatives": "n"}, "'negatives'", "non-empty list"),
        (Kind.TRIPLETS, {"anchor": "q", "positive": "d", "negatives": ["n", ""]}, "'negatives'[1]", "empty"),
        (Kind.TRIPLETS, {"anchor": "q", "positive": "d", "negatives": ["n", 2]}, "'negatives'[1]", "string"),
        (Kind.TRIPLETS, {"anchor": "q", "positive": "d", "negative": "n", "negatives": ["m"]}, "'negatives'", "both"),
        (Kind.SCORED, {"sentence1": "a", "sentence2": "b"}, "'score'", "missing column"),
        (Kind.SCORED, {"sentence1": "a", "sentence2": "b", "score": "high"}, "'score'", "finite number"),
        (Kind.SCORED, {"sentence1": "a", "sentence2": "b", "score": "nan"}, "'score'", "finite number"),
        (Kind.SCORED, {"sentence1": "a", "sentence2": "b", "score": float("inf")}, "'score'", "finite number"),
        (Kind.SCORED, {"sentence1": "a", "sentence2": "b", "score": True}, "'score'", "finite number"),
        (Kind.SCORED, {"sentence1": "a", "sentence2": "b", "score": None}, "'score'", "finite number"),
        (Kind.SCORED, {"sentence1": "", "sentence2": "b", "score": 1}, "'sentence1'", "empty"),
        (Kind.PREFERENCE, {"prompt": " ", "chosen": "c", "rejected": "r"}, "'prompt'", "empty"),
        (Kind.PREFERENCE, {"prompt": "p", "chosen": "c"}, "'rejected'", "missing column"),
        (Kind.PREFERENCE, {"prompt": "p", "chosen": ["c"], "rejected": "r"}, "'chosen'", "must be a string"),
        (Kind.PREFERENCE, {"prompt": "p", "chosen": "c", "rejected": "r", "margin": "big"}, "'margin'", "finite"),
    ],
)
def test_bad_rows_name_file_line_and_column(kind: Kind, row: dict[str, Any], column: str, reason: str) -> None:
    message = error_of(row, kind)
    assert message.startswith(f"{PATH}:7: ")
    assert column in message
    assert reason in message


def test_remapped_columns_are_validated_under_their_new_names() -> None:
    columns = {"premise": "anchor", "hypothesis": "positive"}
    example = to_example({"premise": "p", "hypothesis": "h", "label": 0}, Kind.PAIRS, PATH, 7, columns)
    assert example == Example("p", "h")


def test_missing_remapped_column_is_named_as_in_the_file() -> None:
    message = error_of({"premise": "p"}, Kind.PAIRS, {"premise": "anchor", "hypothesis": "positive"})
    assert message.startswith(f"{PATH}:7: missing column 'hypothesis'")
    assert "'positive'" in message


def test_blank_remapped_column_is_named_as_in_the_file() -> None:
    message = error_of({"question": "q", "answer": " "}, Kind.PAIRS, {"question": "anchor", "answer": "positive"})
    assert message.startswith(f"{PATH}:7: column 'answer' (mapped to 'positive')")


def test_a_mapping_wins_over_a_column_with_the_target_name() -> None:
    row = {"anchor": "old", "query": "new", "positive": "d"}
    assert remap(row, {"query": "anchor"}) == {"anchor": "new", "positive": "d"}
    assert "missing column 'query'" in error_of({"anchor": "old", "positive": "d"}, Kind.PAIRS, {"query": "anchor"})


def test_remap_can_swap_columns_and_keeps_the_others() -> None:
    row = {"a": 1, "b": 2, "c": 3}
    assert remap(row, {"a": "b", "b": "a"}) == {"a": 2, "b": 1, "c": 3}
    assert remap(row, None) == row


@pytest.mark.parametrize(
    ("columns", "kind"),
    [
        ({"text"}, Kind.SENTENCES),
        ({"_id", "text", "metadata"}, Kind.SENTENCES),
        ({"anchor", "positive"}, Kind.PAIRS),
        ({"anchor", "positive", "negative", "split"}, Kind.TRIPLETS),
        ({"anchor", "positive", "negatives"}, Kind.TRIPLETS),
        ({"sentence1", "sentence2", "score", "genre"}, Kind.SCORED),
        ({"prompt", "chosen", "rejected", "margin"}, Kind.PREFERENCE),
    ],
)
def test_kind_is_inferred_from_the_columns(columns: set[str], kind: Kind) -> None:
    assert infer_kind(columns) is kind


@pytest.mark.parametrize(
    ("columns", "problem"),
    [
        ({"premise", "hypothesis", "label"}, "fit no kind"),
        (set(), "fit no kind"),
        ({"sentence1", "sentence2"}, "fit no kind"),
        ({"text", "anchor", "positive"}, "fit several kinds (sentences, pairs)"),
    ],
)
def test_uninferable_columns_list_the_expected_sets(columns: set[str], problem: str) -> None:
    with pytest.raises(DataError) as caught:
        infer_kind(columns, path=PATH, line=3)
    message = str(caught.value)
    assert message.startswith(f"{PATH}:3: cannot infer the data kind")
    assert problem in message
    for options in KIND_COLUMNS.values():
        for option in options:
            assert "{" + ", ".join(option) + "}" in message


@pytest.mark.parametrize("name", ["pairs", Kind.PAIRS])
def test_kind_names_are_read(name: Kind | str) -> None:
    assert as_kind(name) is Kind.PAIRS


def test_unknown_kind_name_lists_the_kinds() -> None:
    with pytest.raises(UnknownNameError) as caught:
        as_kind("pair")
    assert all(kind.value in str(caught.value) for kind in Kind)
