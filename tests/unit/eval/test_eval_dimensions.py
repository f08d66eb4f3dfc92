"""Metrics at several embedding sizes (Matryoshka): the curve equals scoring a model loaded at each truncate_dim,
each text is embedded once, and `eval all --dims` reports and plots it."""

from __future__ import annotations

import itertools
import json

import pytest
from conftest import TINY_TEXTS

from embedkit.encoders import load_encoder
from embedkit.errors import ConfigError
from embedkit.eval import RetrievalEvaluator, STSEvaluator
from embedkit.eval.report import CachedEncoder, dimension_curve, run_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DIMS = (32, 16, 4)


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture()
def data(tmp_path):
    """An STS file and a BEIR folder made of the tiny model's words."""
    pairs = list(itertools.combinations(TINY_TEXTS, 2))
    write_jsonl(tmp_path / "sts.jsonl", [
        {"sentence1": a, "sentence2": b, "score": (i * 7) % 11 / 2} for i, (a, b) in enumerate(pairs)
    ])
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    write_jsonl(beir / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(TINY_TEXTS)])
    write_jsonl(beir / "queries.jsonl", [{"_id": f"q{i}", "text": t.split()[1]} for i, t in enumerate(TINY_TEXTS)])
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(TINY_TEXTS))))
    return tmp_path


class Counting:
    """An encoder that counts the texts it embeds."""

    def __init__(self, encoder) -> None:
        self.encoder, self.embedded = encoder, 0

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode(self, texts, batch_size=32, normalize=False, show_progress=None, *, prompt=None):
        self.embedded += len(texts)
        return self.encoder.encode(texts, batch_size=batch_size, normalize=normalize, show_progress=show_progress,
                                   prompt=prompt)


@pytest.mark.parametrize("make", [lambda data: STSEvaluator(data / "sts.jsonl"),
                                  lambda data: RetrievalEvaluator(data / "beir", k=10, recall_at=(1, 10))],
                         ids=["sts", "retrieval"])
def test_the_curve_equals_the_model_loaded_at_each_size(data, tiny_model_path, make) -> None:
    evaluator = make(data)
    counting = Counting(load_encoder(tiny_model_path, precision="fp32"))
    curve = dimension_curve(evaluator, counting, DIMS)
    assert list(curve) == list(DIMS)
    for dim in DIMS:
        expected = evaluator(load_encoder(tiny_model_path, precision="fp32", truncate_dim=dim))
        assert curve[dim] == pytest.approx(expected, abs=1e-3)
    assert curve[4] != curve[32]
    once = Counting(load_encoder(tiny_model_path, precision="fp32"))
    evaluator(CachedEncoder(once))
    assert counting.embedded == once.embedded  # each distinct text once, for every size together


def test_a_size_beyond_the_model_is_refused_before_anything_is_embedded(data, tiny_model_path) -> None:
    counting = Counting(load_encoder(tiny_model_path, precision="fp32"))
    with pytest.raises(ConfigError, match="64 exceeds the 32 dimensions"):
        dimension_curve(STSEvaluator(data / "sts.jsonl"), counting, (16, 64))
    assert counting.embedded == 0


def test_report_with_dims_adds_the_metrics_at_each_size_and_plots_them(data, tiny_model_path, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    (data / "suite.toml").write_text('[sts]\ndev = "sts.jsonl"\n[retrieval]\nsmall = { path = "beir", k = 10, recall_at = [1, 10] }\n')
    document = run_report([str(tiny_model_path)], data / "suite.toml", tmp_path / "report", dims=DIMS)
    metrics = document["models"][0]["metrics"]
    assert {"sts/dev/spearman/dim4", "sts/dev/spearman/dim32", "retrieval/small/ndcg@10/dim16"} <= set(metrics)
    assert not any(name.startswith("geometry/") and "/dim" in name for name in metrics)
    assert metrics["sts/dev/spearman/dim32"] == pytest.approx(metrics["sts/dev/spearman"], abs=1e-6)
    assert "dimensions.png" in document["plots"]
    assert (tmp_path / "report" / "dimensions.png").read_bytes().startswith(PNG_SIGNATURE)
