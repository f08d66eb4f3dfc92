"""BEIR folders as training data: judged (query, document) pairs, and splitting one qrels file by a seed."""

from __future__ import annotations

import json

import pytest

from embedkit.data import read_examples, split_queries
from embedkit.data.beir import read_beir
from embedkit.errors import ConfigError, DataError
from embedkit.types import Kind


@pytest.fixture
def beir(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [("d1", "Wings", "lift at speed"), ("d2", "", "drag grows"), ("d3", "Flaps", "more lift"), ("d4", "", "")]
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"question {i}"}) + "\n"
                                                  for i in range(1, 11)))
    judged = [(f"q{i}", f"d{1 + i % 3}", 1 + i % 3) for i in range(1, 11)] + [("q1", "d4", 2)]
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in judged))
    return folder


def test_a_beir_split_reads_as_query_document_pairs(beir) -> None:
    examples = read_examples(beir, split="test")
    assert examples.kind == Kind.PAIRS and len(examples) == 10  # d4 is empty: it makes no pair
    first = examples[0]
    assert (first.anchor, first.positive) == ("question 1", "drag grows")
    assert first.source == (str(beir / "qrels" / "test.tsv"), 2)
    assert {e.positive for e in examples} == {"Wings lift at speed", "drag grows", "Flaps more lift"}


def test_graded_judgements_below_the_threshold_make_no_pair(beir) -> None:
    examples = read_examples(beir, split="test", min_relevance=3)
    assert {e.positive for e in examples} == {"Flaps more lift"} and len(examples) == 3


def test_a_beir_folder_is_not_another_kind(beir) -> None:
    with pytest.raises(ConfigError, match="BEIR folder"):
        read_examples(beir, kind="triplets", split="test")
    with pytest.raises(DataError, match="no qrels for split 'train'"):
        read_examples(beir)
    with pytest.raises(DataError, match="scores 9 or more"):
        read_examples(beir, split="test", min_relevance=9)


def test_split_queries_is_seeded_disjoint_and_complete(beir, tmp_path) -> None:
    counts = split_queries(beir, tmp_path / "split", {"train": 0.6, "dev": 0.2, "test": 0.2}, seed=3)
    assert counts == {"train": 6, "dev": 2, "test": 2}
    splits = {name: read_beir(tmp_path / "split", name) for name in counts}
    ids = {name: set(data.query_ids) for name, data in splits.items()}
    assert set.union(*ids.values()) == {f"q{i}" for i in range(1, 11)}
    assert sum(map(len, ids.values())) == 10
    original = read_beir(beir, "test").qrels
    for data in splits.values():
        assert data.qrels == {q: original[q] for q in data.query_ids}  # a query keeps all of its judgements
    again = split_queries(beir, tmp_path / "again", {"train": 0.6, "dev": 0.2, "test": 0.2}, seed=3)
    assert again == counts and all(
        read_beir(tmp_path / "again", name).query_ids == splits[name].query_ids for name in counts)
    other = split_queries(beir, tmp_path / "other", {"train": 0.6, "dev": 0.2, "test": 0.2}, seed=4)
    assert other == counts and read_beir(tmp_path / "other", "dev").query_ids != splits["dev"].query_ids


@pytest.mark.parametrize(("fractions", "match"), [
    ({"train": 0.5, "dev": 0.2}, "sum to 1"),
    ({"train": 1.2, "dev": -0.2}, "positive"),
    ({"train": 0.98, "dev": 0.01, "test": 0.01}, "too few"),
])
def test_bad_splits(beir, tmp_path, fractions, match) -> None:
    with pytest.raises(ConfigError, match=match):
        split_queries(beir, tmp_path / "split", fractions)


def test_existing_qrels_are_never_overwritten(beir, tmp_path) -> None:
    split_queries(beir, tmp_path / "split", {"train": 0.5, "dev": 0.5})
    before = (tmp_path / "split" / "qrels" / "dev.tsv").read_text()
    with pytest.raises(ConfigError, match="already has qrels for train, dev"):
        split_queries(beir, tmp_path / "split", {"train": 0.5, "dev": 0.5}, seed=9)
    assert (tmp_path / "split" / "qrels" / "dev.tsv").read_text() == before


def test_the_split_command(beir, tmp_path, capsys) -> None:
    from embedkit.cli import main

    code = main(["split-queries", "--data", str(beir), "--out", str(tmp_path / "s"), "--splits", "train=0.8,test=0.2",
                 "--seed", "1", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["queries"] == {"train": 8, "test": 2}
    assert main(["split-queries", "--data", str(beir), "--out", str(tmp_path / "t"), "--splits", "train:1"]) == 2
    assert "splits look like train=0.8" in capsys.readouterr().err
