"""Tests of embedkit.data.io: every format, gzip, Hugging Face names and the errors of bad files."""

from __future__ import annotations

import gzip
import json
import sys
import types
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedkit.data import io
from embedkit.data.io import FORMATS, is_hf_name, read_rows
from embedkit.errors import DataError, UnknownNameError


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_bytes(text.encode("utf-8"))
    return path


def rows_of(path: Path | str, **options: Any) -> list[tuple[int, dict[str, Any]]]:
    return list(read_rows(path, **options))


def error_of(path: Path | str, **options: str) -> DataError:
    with pytest.raises(DataError) as caught:
        rows_of(path, **options)
    return caught.value


def test_jsonl_lines_are_physical_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", '{"text": "one"}\n\n   \n{"text": "two"}\r\n{"text": "three"}')
    assert rows_of(path) == [(1, {"text": "one"}), (4, {"text": "two"}), (5, {"text": "three"})]


def test_a_leading_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", '\ufeff{"text": "one"}\n')
    assert rows_of(path) == [(1, {"text": "one"})]


def test_invalid_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.jsonl", '{"text": "one"}\n{"text": "two"}\n{"text": \n')
    error = error_of(path)
    assert str(error).startswith(f"{path}:3: invalid JSON")
    assert (error.path, error.line) == (str(path), 3)


def test_json_line_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "list.jsonl", '{"text": "one"}\n["text", "two"]\n')
    error = error_of(path)
    assert str(error).startswith(f"{path}:2:")
    assert "object" in str(error)


def test_json_array_rows_carry_the_line_they_start_on(tmp_path: Path) -> None:
    text = '[\n  {"text": "one"},\n  {\n    "text": "two"\n  }, {"text": "three"}\n]\n'
    path = write(tmp_path, "a.json", text)
    assert rows_of(path) == [(2, {"text": "one"}), (3, {"text": "two"}), (5, {"text": "three"})]


def test_empty_json_array_has_no_rows(tmp_path: Path) -> None:
    assert rows_of(write(tmp_path, "a.json", " [ ]\n")) == []


def test_json_file_holding_json_lines_is_read_as_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "a.json", '{"text": "one"}\n{"text": "two"}\n')
    assert rows_of(path) == [(1, {"text": "one"}), (2, {"text": "two"})]


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ('[\n{"text": "one"},\n{"text": }\n]', 3, "invalid JSON"),
        ('[\n{"text": "one"}\n{"text": "two"}\n]', 3, "expected ','"),
        ('[\n{"text": "one"},\n"two"\n]', 3, "object"),
        ('[\n{"text": "one"}\n]\n\n{"text": "two"}', 5, "extra data"),
        ('[\n{"text": "one"},\n', 3, "invalid JSON"),
    ],
)
def test_malformed_json_array_names_the_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = write(tmp_path, "bad.json", text)
    error = error_of(path)
    assert str(error).startswith(f"{path}:{line}:")
    assert reason in str(error)


def test_csv_data_starts_on_line_two_and_quoted_newlines_keep_lines_physical(tmp_path: Path) -> None:
    text = 'anchor,positive\n"a, b","multi\nline"\n\nc,d\n'
    path = write(tmp_path, "a.csv", text)
    assert rows_of(path) == [(2, {"anchor": "a, b", "positive": "multi\nline"}), (5, {"anchor": "c", "positive": "d"})]


def test_csv_row_with_wrong_field_count_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", "anchor,positive\na,b\nc,d,e\n")
    error = error_of(path)
    assert str(error).startswith(f"{path}:3:")
    assert "expected 2 fields" in str(error)


def test_csv_with_broken_quoting_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", 'anchor,positive\na,b\n"c"x,d\n')
    assert str(error_of(path)).startswith(f"{path}:3: malformed csv record")


def test_csv_header_with_duplicate_columns_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", "anchor,anchor\na,b\n")
    error = error_of(path)
    assert str(error).startswith(f"{path}:1:")
    assert "anchor" in str(error)


def test_tsv_keeps_quote_characters_as_text(tmp_path: Path) -> None:
    path = write(tmp_path, "a.tsv", 'sentence1\tsentence2\tscore\n"quoted" start\tsay "hi\t4.5\r\n')
    assert rows_of(path) == [(2, {"sentence1": '"quoted" start', "sentence2": 'say "hi', "score": "4.5"})]


def test_tsv_row_with_wrong_field_count_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.tsv", "anchor\tpositive\na\tb\nc\td\ne\n")
    assert str(error_of(path)).startswith(f"{path}:4: expected 2 fields")


def test_txt_strips_only_the_line_ending_and_skips_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "  one  \r\n\n \t \ntwo\t\nthree")
    assert rows_of(path) == [(1, {"text": "  one  "}), (4, {"text": "two\t"}), (5, {"text": "three"})]


def test_txt_keeps_a_lone_carriage_return_inside_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "one\rstill one\ntwo\n")
    assert rows_of(path) == [(1, {"text": "one\rstill one"}), (2, {"text": "two"})]


@pytest.mark.parametrize(
    ("name", "text", "lines"),
    [
        ("a.jsonl.gz", '{"text": "one"}\n\n{"text": "two"}\n', (1, 3)),
        ("a.json.gz", '[{"text": "one"},\n\n{"text": "two"}]', (1, 3)),
        ("a.csv.gz", "text\none\n\ntwo\n", (2, 4)),
        ("a.tsv.gz", "text\none\n\ntwo\n", (2, 4)),
        ("a.txt.gz", "one\n\ntwo\n", (1, 3)),
    ],
)
def test_gzipped_files_are_read_transparently(tmp_path: Path, name: str, text: str, lines: tuple[int, int]) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    assert rows_of(path) == [(lines[0], {"text": "one"}), (lines[1], {"text": "two"})]


def test_gzipped_file_with_bad_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "one"}\n{oops}\n'))
    assert str(error_of(path)).startswith(f"{path}:2: invalid JSON")


def test_corrupt_gzip_is_a_data_error(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.jsonl.gz", '{"text": "not compressed"}\n')
    error = error_of(path)
    assert str(error).startswith(f"{path}:")


def test_parquet_lines_are_row_index_plus_one(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    table = pa.table({"anchor": ["a", "b", "c"], "negatives": [["x"], ["y", "z"], []], "score": [1.0, 2.5, None]})
    pq.write_table(table, path, row_group_size=2)
    assert rows_of(path) == [
        (1, {"anchor": "a", "negatives": ["x"], "score": 1.0}),
        (2, {"anchor": "b", "negatives": ["y", "z"], "score": 2.5}),
        (3, {"anchor": "c", "negatives": [], "score": None}),
    ]


def test_unreadable_parquet_is_a_data_error(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.parquet", "not parquet")
    assert str(error_of(path)).startswith(f"{path}: cannot read parquet")


def test_format_argument_overrides_the_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.data", '{"text": "one"}\n')
    assert rows_of(path, format="jsonl") == [(1, {"text": "one"})]
    assert rows_of(path, format="txt") == [(1, {"text": '{"text": "one"}'})]


def test_unknown_suffix_lists_the_supported_formats(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.xml", "<rows/>")
    error = error_of(path)
    assert str(error).startswith(f"{path}:")
    assert all(name in str(error) for name in FORMATS)


def test_unknown_format_name_lists_the_valid_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.jsonl", '{"text": "one"}\n')
    with pytest.raises(UnknownNameError) as caught:
        read_rows(path, format="xml")
    assert all(name in str(caught.value) for name in FORMATS)


def test_missing_file_is_named_at_once(tmp_path: Path) -> None:
    path = tmp_path / "missing.jsonl"
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == f"{path}: no such file"


def test_missing_relative_file_is_not_mistaken_for_a_dataset_name() -> None:
    with pytest.raises(DataError, match="no such file"):
        read_rows("no_such_folder/train.jsonl")


def test_folder_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a file"):
        read_rows(tmp_path)


def test_non_utf8_file_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    assert "UTF-8" in str(error_of(path))


@pytest.mark.parametrize("name", ["rows.txt", "rows.jsonl", "rows.csv", "rows.tsv", "rows.json", "rows.jsonl.gz"])
def test_a_byte_that_is_not_utf8_is_named_with_its_line(tmp_path: Path, name: str) -> None:
    # far enough into the file that the decoder meets it in a later block than the first line's
    lines = ["text", *(f"row {i}" for i in range(3000)), "caf\xe9", "after"]
    if name.startswith("rows.json"):
        lines = [json.dumps({"text": line}, ensure_ascii=False) for line in lines[1:]]
    if name == "rows.json":
        lines = ["[", *(line + "," for line in lines[:-1]), lines[-1], "]"]
    data = "\n".join(lines).encode("latin-1") + b"\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    bad_line = next(number for number, line in enumerate(data.split(b"\n"), start=1) if b"\xe9" in line)
    message = str(error_of(path))
    assert message.startswith(f"{path}:{bad_line}: not UTF-8 text: byte ") and "(0xe9)" in message


def test_blank_lines_of_a_text_file_are_rows_when_asked(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.txt", "\none\n\n  \ntwo\n\n\n")
    assert rows_of(path) == [(2, {"text": "one"}), (5, {"text": "two"})]
    # every blank line before the last text; the ones after it shift nothing
    assert rows_of(path, keep_blank_lines=True) == [
        (1, {"text": ""}), (2, {"text": "one"}), (3, {"text": ""}), (4, {"text": "  "}), (5, {"text": "two"})]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hf:org/name", True),
        ("org/name", True),
        ("sentence-transformers/stsb", True),
        ("org/name.jsonl", False),
        ("org/name.csv.gz", False),
        ("a/b/c", False),
        ("name", False),
    ],
)
def test_dataset_names_are_told_from_paths(name: str, expected: bool) -> None:
    assert is_hf_name(name) is expected


@pytest.fixture
def fake_datasets(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """A stand-in ``datasets`` module that records its calls."""
    calls: dict[str, object] = {}

    def load_dataset(path: str, name: str | None = None, split: str | None = None) -> list[dict[str, str]]:
        calls.update(name=path, config=name, split=split)
        if path == "org/missing":
            raise FileNotFoundError("Dataset 'org/missing' doesn't exist on the Hub\nor cannot be accessed.")
        if name == "nope":
            raise ValueError("BuilderConfig 'nope' not found. Available: ['cola', 'sst2']")
        return [{"text": "one"}, {"text": "two"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(io, "hub_reachable", lambda: True)
    return calls


@pytest.mark.parametrize("name", ["hf:org/name", "org/name"])
def test_hugging_face_rows_are_numbered_from_one(fake_datasets: dict[str, object], name: str) -> None:
    assert rows_of(name, split="test") == [(1, {"text": "one"}), (2, {"text": "two"})]
    assert fake_datasets == {"name": "org/name", "config": None, "split": "test"}


@pytest.mark.parametrize(("name", "dataset", "config"), [
    ("hf:nyu-mll/glue:cola", "nyu-mll/glue", "cola"),
    ("hf:GEM/opusparcus:de.100", "GEM/opusparcus", "de.100"),
    ("hf:org/name", "org/name", None),
])
def test_a_hugging_face_config_follows_the_name_after_a_colon(
    fake_datasets: dict[str, object], name: str, dataset: str, config: str | None
) -> None:
    assert rows_of(name, split="validation") == [(1, {"text": "one"}), (2, {"text": "two"})]
    assert fake_datasets == {"name": dataset, "config": config, "split": "validation"}


def test_a_config_needs_the_prefix_so_a_path_with_a_colon_stays_a_path(
    fake_datasets: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert not is_hf_name("org/name:cola")
    with pytest.raises(DataError, match="^org/name:cola: no such file$"):
        read_rows("org/name:cola")
    (tmp_path / "org").mkdir()
    write(tmp_path / "org", "name:cola", json.dumps({"text": "here"}))
    assert rows_of("org/name:cola", format="jsonl") == [(1, {"text": "here"})]
    assert fake_datasets == {}


@pytest.mark.parametrize("name", ["hf:", "hf:org/name:", "hf::cola"])
def test_an_empty_dataset_or_config_name_is_refused(fake_datasets: dict[str, object], name: str) -> None:
    with pytest.raises(DataError) as caught:
        read_rows(name)
    assert str(caught.value) == f"{name}: a Hugging Face dataset is named hf:org/name or hf:org/name:config"
    assert fake_datasets == {}


def test_an_unknown_config_is_one_line_naming_it(fake_datasets: dict[str, object]) -> None:
    with pytest.raises(DataError) as caught:
        read_rows("hf:org/name:nope")
    assert str(caught.value) == ("hf:org/name:nope: cannot load Hugging Face dataset (config 'nope', split 'train'): "
                                 "BuilderConfig 'nope' not found. Available: ['cola', 'sst2']")


def test_hugging_face_failure_is_one_line_naming_the_dataset(fake_datasets: dict[str, object]) -> None:
    with pytest.raises(DataError) as caught:
        read_rows("hf:org/missing")
    message = str(caught.value)
    assert message.startswith("hf:org/missing: cannot load Hugging Face dataset")
    assert "doesn't exist" in message
    assert "\n" not in message


def test_a_missing_file_named_like_a_dataset_is_first_of_all_a_missing_file(fake_datasets: dict[str, object]) -> None:
    with pytest.raises(DataError) as caught:
        read_rows("org/missing")
    message = str(caught.value)
    assert message.startswith("org/missing: no such file, and no Hugging Face dataset of that name loads")
    assert "doesn't exist" in message and "\n" not in message


def test_offline_a_name_that_is_no_file_is_missing_without_asking_for_a_dataset(
    fake_datasets: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(io, "hub_reachable", lambda: False)
    with pytest.raises(DataError, match=r"^org/name: no such file \(and the Hugging Face hub cannot be reached"):
        read_rows("org/name")
    assert fake_datasets == {}  # the hub's clients, which retry for a minute, were never asked
    assert rows_of("hf:org/name") == [(1, {"text": "one"}), (2, {"text": "two"})]  # named, it may be cached


def test_hugging_face_without_the_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"org/name: .*the datasets package: pip install 'embedkit\[hf\]'"):
        read_rows("org/name")


def test_path_object_is_always_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        read_rows(Path("org/name"))
    (tmp_path / "org").mkdir()
    write(tmp_path / "org", "name", json.dumps({"text": "one"}))
    assert rows_of("org/name", format="jsonl") == [(1, {"text": "one"})]
