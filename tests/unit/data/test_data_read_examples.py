"""Tests of embedkit.data.read_examples: files to Examples, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedkit.data import Example, Kind, read_examples
from embedkit.errors import ConfigError, DataError, UnknownNameError


def write_jsonl(folder: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_kind_is_inferred_from_the_first_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, "sts.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 3.2, "genre": "x"}])
    assert read_examples(path) == [Example("a", "b", score=3.2)]


def test_kind_may_be_a_name(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, "rows.jsonl", [{"text": "q", "anchor": "q", "positive": "d"}])
    assert read_examples(path, kind="pairs") == [Example("q", "d")]


def test_unknown_kind_name_lists_the_kinds(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, "rows.jsonl", [{"text": "q"}])
    with pytest.raises(UnknownNameError) as caught:
        read_examples(path, kind="sentence")
    assert all(kind.value in str(caught.value) for kind in Kind)


def test_inference_failure_names_the_first_row(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("premise,hypothesis\na,b\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_examples(path)
    assert str(caught.value).startswith(f"{path}:2: cannot infer the data kind")


def test_columns_are_remapped_before_inference(tmp_path: Path) -> None:
    path = tmp_path / "nli.csv"
    path.write_text("premise,hypothesis,label\nA man sleeps.,A person rests.,entailment\n", encoding="utf-8")
    examples = read_examples(path, columns={"premise": "anchor", "hypothesis": "positive"})
    assert examples == [Example("A man sleeps.", "A person rests.")]
    assert examples[0].source == (str(path), 2)


def test_sources_point_at_the_physical_lines(tmp_path: Path) -> None:
    path = tmp_path / "wiki.txt"
    path.write_text("first\n\nsecond\n", encoding="utf-8")
    examples = read_examples(path)
    assert [example.source for example in examples] == [(str(path), 1), (str(path), 3)]
    assert examples[1] == Example("second", "second")


def test_bad_row_in_a_later_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "sts.tsv"
    path.write_text("sentence1\tsentence2\tscore\na\tb\t1.0\nc\td\t5\ne\tf\tn/a\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_examples(path)
    assert str(caught.value).startswith(f"{path}:4: column 'score' must be a finite number")


def test_triplets_from_parquet_with_lists_of_negatives(tmp_path: Path) -> None:
    path = tmp_path / "triplets.parquet"
    table = pa.table({"anchor": ["q1", "q2"], "positive": ["d1", "d2"], "negatives": [["n1"], ["n2", "n3"]]})
    pq.write_table(table, path)
    examples = read_examples(path)
    assert examples == [Example("q1", "d1", ("n1",)), Example("q2", "d2", ("n2", "n3"))]
    assert examples[1].source == (str(path), 2)


def test_limit_stops_reading_before_a_later_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "one"}\n{"text": "two"}\n{broken\n', encoding="utf-8")
    assert [example.anchor for example in read_examples(path, limit=2)] == ["one", "two"]


def test_limit_below_one_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, "rows.jsonl", [{"text": "q"}])
    with pytest.raises(ConfigError):
        read_examples(path, limit=0)


@pytest.mark.parametrize(("name", "text"), [("empty.jsonl", ""), ("blank.txt", "\n \n"), ("header.csv", "text\n")])
def test_a_file_without_rows_is_an_error(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_examples(path)
    assert str(caught.value) == f"{path}: no rows"


def test_format_is_passed_through(tmp_path: Path) -> None:
    path = tmp_path / "sentences.data"
    path.write_text("one\ntwo\n", encoding="utf-8")
    assert len(read_examples(path, format="txt")) == 2


def test_in_memory_tables_read_like_files() -> None:
    import datasets
    import pandas

    rows = [{"premise": "a cat sits", "hypothesis": "an animal sits"}, {"premise": "it rains", "hypothesis": "wet"}]
    columns = {"premise": "anchor", "hypothesis": "positive"}
    for table in (rows, datasets.Dataset.from_list(rows), pandas.DataFrame(rows)):
        examples = read_examples(table, columns=columns)
        assert examples.kind == Kind.PAIRS
        assert [(e.anchor, e.positive) for e in examples] == [("a cat sits", "an animal sits"), ("it rains", "wet")]
        assert examples[1].source == (f"<{type(table).__name__}>", 2)


def test_a_table_of_non_rows_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"<list>: row 2 is a str, not a mapping of columns"):
        read_examples([{"text": "a"}, "b"])


def test_fit_takes_a_table(tiny_model_path, tmp_path) -> None:
    import pandas

    from embedkit.encoders import load_encoder
    from embedkit.losses import build_loss
    from embedkit.training.fit import FitSettings, fit

    frame = pandas.DataFrame({"anchor": [f"the cat {i}" for i in range(8)], "positive": [f"a dog {i}" for i in range(8)]})
    result = fit(load_encoder(tiny_model_path, precision="fp32"), frame, build_loss("infonce"),
                 FitSettings(output_dir=tmp_path, batch_size=4, max_steps=1, show_progress=False))
    assert result.steps == 1
