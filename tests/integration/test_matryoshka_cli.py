"""``--truncate-dim`` and ``--dims`` on encode, index build, search and eval, end to end on the tiny model."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from conftest import TINY_TEXTS

from embedkit.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def data(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": f"d{i}", "text": t} for i, t in enumerate(TINY_TEXTS)])
    write_jsonl(tmp_path / "sts.jsonl", [{"sentence1": a, "sentence2": b, "score": (i * 7) % 11 / 2}
                                         for i, (a, b) in enumerate(itertools.combinations(TINY_TEXTS, 2))])
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    write_jsonl(beir / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(TINY_TEXTS)])
    write_jsonl(beir / "queries.jsonl", [{"_id": f"q{i}", "text": t.split()[1]} for i, t in enumerate(TINY_TEXTS)])
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(TINY_TEXTS))))
    return tmp_path


def test_encode_index_and_search_at_a_truncate_dim(capsys, tiny_model_path, data) -> None:
    (data / "s.txt").write_text("the cat sat\na dog runs\n")
    code, out, _ = run(capsys, "encode", "--model", tiny_model_path, "--input", data / "s.txt",
                       "--output", data / "e.npy", "--truncate-dim", 8, "--json")
    assert code == 0 and json.loads(out)["shape"] == [2, 8] and np.load(data / "e.npy").shape == (2, 8)

    code, out, _ = run(capsys, "index", "build", "--model", tiny_model_path, "--corpus", data / "corpus.jsonl",
                       "--out", data / "idx", "--truncate-dim", 8, "--json")
    info = json.loads(out)
    assert code == 0 and (info["dimension"], info["truncate_dim"]) == (8, 8)
    code, out, _ = run(capsys, "index", "info", data / "idx")
    assert code == 0 and "truncate_dim      8" in out
    code, out, _ = run(capsys, "search", data / "idx", "the cat sat on the mat", "-k", 1, "--json")
    assert code == 0 and json.loads(out)[0]["id"] == "d0"  # the index's model, cut as the index was

    code, _, err = run(capsys, "index", "build", "--model", tiny_model_path, "--corpus", data / "corpus.jsonl",
                       "--out", data / "wide", "--truncate-dim", 64)
    assert code == 2 and "truncate_dim 64 exceeds the 32 dimensions" in err and not (data / "wide").exists()


def test_eval_at_a_truncate_dim_and_over_dims(capsys, tiny_model_path, data) -> None:
    code, out, _ = run(capsys, "eval", "sts", "--model", tiny_model_path, "--data", data / "sts.jsonl",
                       "--truncate-dim", 8, "--json")
    at_8 = json.loads(out)["metrics"]["spearman"]
    code, out, _ = run(capsys, "eval", "sts", "--model", tiny_model_path, "--data", data / "sts.jsonl",
                       "--dims", "32,8", "--json")
    curve = json.loads(out)["dims"]
    assert code == 0 and list(curve) == ["32", "8"] and curve["8"]["spearman"] == pytest.approx(at_8, abs=1e-3)

    code, out, _ = run(capsys, "eval", "retrieval", "--model", tiny_model_path, "--data", data / "beir", "--k", 10,
                       "--recall-at", "1,10", "--dims", "32,16,4")
    lines = out.splitlines()
    assert code == 0 and lines[1].split() == ["dims", "ndcg@10", "mrr@10", "recall@1", "recall@10", "map@10"]
    assert [line.split()[0] for line in lines[2:]] == ["32", "16", "4"]


@pytest.mark.parametrize("argv,message", [
    (["--truncate-dim", "8", "--dims", "32,8"], "not allowed with argument"),
    (["--dims", "32,x"], "expected comma-separated integers"),
    (["--dims", "32,0"], "dimensions must be positive integers"),
])
def test_dimension_options_are_checked(capsys, tiny_model_path, data, argv, message) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "sts", "--model", str(tiny_model_path), "--data", str(data / "sts.jsonl"), *argv])
    assert message in capsys.readouterr().err
