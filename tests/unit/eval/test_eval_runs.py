"""Run files: TREC and JSONL runs written by `search`, scored by `eval run` exactly as pytrec_eval scores them."""

from __future__ import annotations

import json

import pytest
import pytrec_eval

from embedkit.cli import main
from embedkit.errors import DataError
from embedkit.eval.runs import read_qrels, read_run, score_run


@pytest.fixture
def beir(tmp_path, tiny_model_path):
    from conftest import TINY_TEXTS, write_beir

    count = len(TINY_TEXTS)
    qrels = [(f"q{i}", f"d{j}", grade) for i in range(count) for j, grade in ((i, 1 + i % 2), ((i + 1) % count, 1))]
    return write_beir(tmp_path / "beir", {f"d{i}": ("", t) for i, t in enumerate(TINY_TEXTS)},
                      {f"q{i}": " ".join(t.split()[:3]) for i, t in enumerate(TINY_TEXTS)}, qrels)


def test_a_trec_run_from_search_scores_the_same_with_eval_run_and_pytrec_eval(beir, tiny_model_path, tmp_path,
                                                                              capsys) -> None:
    assert main(["index", "build", "--model", str(tiny_model_path), "--corpus", str(beir), "--out",
                 str(tmp_path / "idx"), "--precision", "fp32"]) == 0
    assert main(["search", str(tmp_path / "idx"), "--queries", str(beir / "queries.jsonl"), "-k", "5",
                 "--output", str(tmp_path / "run.trec"), "--format", "trec", "--precision", "fp32"]) == 0
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert len(lines) == 8 * 5 and all(len(line.split()) == 6 and line.split()[1] == "Q0" for line in lines)
    capsys.readouterr()
    assert main(["eval", "run", str(tmp_path / "run.trec"), "--qrels", str(beir), "--k", "5", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    ours = document["metrics"]
    assert (document["scale"], document["unscaled"]) == (100, []) and document["queries"] == 8

    qrels = read_qrels(beir / "qrels" / "test.tsv")
    run = {}
    for line in lines:
        query, _, doc, _, score, _ = line.split()
        run.setdefault(query, {})[doc] = float(score)
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.1"}).evaluate(run)
    mean = lambda measure: 100 * sum(q[measure] for q in theirs.values()) / len(theirs)  # noqa: E731
    assert ours["ndcg@10"] == pytest.approx(mean("ndcg_cut_10"), abs=1e-9)
    assert ours["recall@1"] == pytest.approx(mean("recall_1"), abs=1e-9)

    assert main(["search", str(tmp_path / "idx"), "--queries", str(beir / "queries.jsonl"), "-k", "5",
                 "--output", str(tmp_path / "run.jsonl"), "--precision", "fp32"]) == 0
    assert score_run(read_run(tmp_path / "run.jsonl"), qrels, k=5) == pytest.approx(ours)


def test_a_judged_query_missing_from_the_run_scores_zero(tmp_path) -> None:
    (tmp_path / "run.trec").write_text("a Q0 d1 1 0.9 x\n")
    metrics = score_run(read_run(tmp_path / "run.trec"), {"a": {"d1": 1}, "b": {"d2": 1}})
    assert metrics["ndcg@10"] == pytest.approx(50.0)


@pytest.mark.parametrize(("text", "match"), [
    ("a Q0 d1 1 0.9\n", r"run.txt:1: a TREC run line has 6 fields"),
    ("a Q0 d1 1 high x\n", r"run.txt:1: score 'high' is not a number"),
    ('{"query_id": "a", "ids": ["d1"]}\n', r"run.txt:1: not a run line"),
    ("\n\n", "the run file is empty"),
])
def test_bad_runs_are_one_line_errors(tmp_path, text, match) -> None:
    (tmp_path / "run.txt").write_text(text)
    with pytest.raises(DataError, match=match):
        read_run(tmp_path / "run.txt")
