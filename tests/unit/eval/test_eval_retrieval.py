"""Retrieval evaluation: BEIR folders, trec_eval metrics, the evaluator through the index, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import write_beir

from embedkit.cli import main
from embedkit.errors import ConfigError, DataError, EmbedkitError
from embedkit.eval import EmptyQuerySetError, RetrievalEvaluator, UnknownIdError, read_beir
from embedkit.eval.retrieval import retrieval_metrics

CORPUS = {
    "d1": ("cats", "the cat sat on the mat"),
    "d2": ("dogs", "a dog runs in the park"),
    "d3": ("", "the sun rises in the east"),
    "d4": ("music", "she plays the piano every evening"),
}
QUERIES = {"q1": "the cat sat", "q2": "a dog runs", "q3": "unjudged query"}
QRELS = [("q1", "d1", 2), ("q1", "d4", 1), ("q2", "d2", 1)]


@pytest.fixture()
def beir(tmp_path):
    write_beir(tmp_path / "beir", CORPUS, QUERIES, QRELS)
    return tmp_path / "beir"


def test_read_beir_keeps_judged_queries_and_joins_title_and_text(beir) -> None:
    data = read_beir(beir)
    assert data.query_ids == ["q1", "q2"] and data.queries == ["the cat sat", "a dog runs"]
    assert data.documents[0] == "cats the cat sat on the mat" and data.documents[2] == "the sun rises in the east"
    assert data.qrels == {"q1": {"d1": 2, "d4": 1}, "q2": {"d2": 1}}


def test_numeric_ids_and_empty_documents_are_accepted(tmp_path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": 1, "title": "", "text": ""}\n{"_id": 2, "text": "x"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": 7, "text": "x"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n7\t2\t1\n")
    data = read_beir(tmp_path)
    assert data.doc_ids == ["1", "2"] and data.documents == ["", "x"] and data.query_ids == ["7"]


@pytest.mark.parametrize(
    ("qrels", "error", "message"),
    [
        ([("q9", "d1", 1)], UnknownIdError, r"test.tsv:2: query id 'q9' is not in queries.jsonl"),
        ([("q1", "d1", 1), ("q1", "d9", 1)], UnknownIdError, r"test.tsv:3: corpus id 'd9' is not in corpus.jsonl"),
        ([("q1", "d1", "high")], DataError, r"test.tsv:2: score 'high' is not an integer"),
        ([], EmptyQuerySetError, r"the test qrels judge no query"),
    ],
)
def test_bad_qrels(tmp_path, qrels, error, message) -> None:
    write_beir(tmp_path, CORPUS, QUERIES, qrels)
    with pytest.raises(error, match=message) as raised:
        read_beir(tmp_path)
    assert isinstance(raised.value, EmbedkitError) and "\n" not in str(raised.value)


def test_other_bad_folders(tmp_path, beir) -> None:
    with pytest.raises(DataError, match="no qrels for split 'dev'; splits here: test"):
        read_beir(beir, split="dev")
    write_beir(tmp_path / "noq", CORPUS, {}, QRELS)
    with pytest.raises(EmptyQuerySetError, match="queries.jsonl: no queries"):
        read_beir(tmp_path / "noq")
    write_beir(tmp_path / "dup", {**CORPUS}, QUERIES, QRELS)
    with (tmp_path / "dup" / "corpus.jsonl").open("a") as f:
        f.write(json.dumps({"_id": "d1", "title": "", "text": "again"}) + "\n")
    with pytest.raises(DataError, match=r"corpus.jsonl:5: duplicate _id 'd1' \(first on line 1\)"):
        read_beir(tmp_path / "dup")
    with pytest.raises(DataError, match="not a BEIR folder"):
        read_beir(tmp_path / "missing")


def test_metrics_of_a_known_run() -> None:
    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"c": 1}}
    # q1 ranks b (gain 1) first and a (gain 2) second; q2 finds its document at rank 2
    run = {"q1": {"b": 0.9, "a": 0.8, "x": 0.1}, "q2": {"y": 0.9, "c": 0.5}}
    discount = [1 / math.log2(r + 1) for r in (1, 2)]
    exponential_q1 = (1 * discount[0] + 3 * discount[1]) / (3 * discount[0] + 1 * discount[1])
    linear_q1 = (1 * discount[0] + 2 * discount[1]) / (2 * discount[0] + 1 * discount[1])
    ndcg_q2 = discount[1]
    exponential = retrieval_metrics(run, qrels, recall_at=(1, 3), map_at=3, gain="exponential")
    linear = retrieval_metrics(run, qrels, recall_at=(1, 3), map_at=3)  # linear is the default, as trec_eval
    assert exponential["ndcg@10"] == pytest.approx(100 * (exponential_q1 + ndcg_q2) / 2)
    assert linear["ndcg@10"] == pytest.approx(100 * (linear_q1 + ndcg_q2) / 2)
    # every other metric counts relevance >= 1 alike, whatever the gains
    for metrics in (exponential, linear):
        assert metrics["mrr@10"] == pytest.approx(100 * (1 + 0.5) / 2)
        assert metrics["recall@1"] == pytest.approx(100 * (0.5 + 0) / 2)
        assert metrics["recall@3"] == pytest.approx(100.0)
        assert metrics["map@3"] == pytest.approx(100 * ((1 + 1) / 2 + 0.5) / 2)


def test_mrr_cutoff_uses_trec_eval_order() -> None:
    # the relevant document is 11th: no reciprocal rank within the top 10, whatever dict order the run has
    run = {"q": {f"d{i:02d}": 1.0 - i / 100 for i in range(12)}}
    metrics = retrieval_metrics(run, {"q": {"d10": 1}}, recall_at=(1,), map_at=100)
    assert metrics["mrr@10"] == 0.0 and metrics["ndcg@10"] == 0.0


def test_bad_settings(beir) -> None:
    with pytest.raises(ConfigError, match="k must be at least 10"):
        RetrievalEvaluator(beir, k=5, recall_at=(1,))
    with pytest.raises(ConfigError, match=r"recall cutoffs must lie in 1..k=100, got \[1, 1000\]"):
        RetrievalEvaluator(beir, recall_at=(1, 1000))
    with pytest.raises(ConfigError, match="unknown gain 'cubic'"):
        RetrievalEvaluator(beir, gain="cubic")


class LookupEncoder:
    """Maps each text to a fixed vector (and looks enough like an embedkit encoder for an index: name, dim, model)."""

    name = "lookup"

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table
        self.prompts: dict[str, str] = {}
        self.dim = len(next(iter(table.values())))
        self.model = torch.nn.Linear(1, 1)  # the index fingerprints the model's weights

    def encode(self, texts, batch_size: int = 64, normalize: bool = False, **kwargs) -> np.ndarray:
        vectors = np.array([self.table[t] for t in texts], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if normalize else vectors


def lookup_for(data) -> LookupEncoder:
    """Query i and document i share direction i: every judged query finds its first judged document first."""
    table = {}
    for i, text in enumerate(data.documents):
        table[text] = np.eye(len(data.documents))[i].tolist()
    table["the cat sat"] = table[data.documents[0]]
    table["a dog runs"] = table[data.documents[1]]
    return LookupEncoder(table)


@pytest.mark.parametrize("spec", ["torch", "faiss:Flat"])
def test_evaluator_searches_through_the_index(beir, spec) -> None:
    evaluator = RetrievalEvaluator(beir, index_spec=spec, k=10, recall_at=(1, 10))
    assert evaluator.primary_metric == "ndcg@10"
    run = evaluator.search(lookup_for(evaluator.data))
    assert set(run) == {"q1", "q2"} and max(run["q1"], key=run["q1"].get) == "d1"
    assert len(run["q1"]) == len(CORPUS)  # k is capped at the corpus size
    metrics = evaluator(lookup_for(evaluator.data))
    assert metrics["mrr@10"] == pytest.approx(100.0) and metrics["recall@10"] == pytest.approx(100.0)
    assert set(metrics) == {"ndcg@10", "mrr@10", "recall@1", "recall@10", "map@10"}


def test_queries_and_documents_are_embedded_after_their_prompts(beir, prompted_model_path) -> None:
    from sentence_transformers import SentenceTransformer

    from embedkit.encoders import load_encoder

    evaluator = RetrievalEvaluator(beir, k=10, recall_at=(1, 10))
    run = evaluator.search(load_encoder(prompted_model_path, device="cpu", precision="fp32"))
    reference = SentenceTransformer(str(prompted_model_path), device="cpu")
    documents = reference.encode_document(evaluator.data.documents, normalize_embeddings=True)
    queries = reference.encode_query(evaluator.data.queries, normalize_embeddings=True)
    expected = queries @ documents.T
    for row, query_id in enumerate(evaluator.data.query_ids):
        found = [run[query_id][doc_id] for doc_id in evaluator.data.doc_ids]
        np.testing.assert_allclose(found, expected[row], atol=1e-5)


def test_cli_retrieval_and_its_errors(capsys, tiny_model_path, beir, tmp_path) -> None:
    code = main(["eval", "retrieval", "--model", str(tiny_model_path), "--data", str(beir), "--k", "10",
                 "--recall-at", "1,10", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["queries"] == 2 and 0 <= result["metrics"]["ndcg@10"] <= 100
    assert result["documents"] == len(CORPUS) and (result["scale"], result["unscaled"]) == (100, [])

    write_beir(tmp_path / "bad", CORPUS, QUERIES, [("q1", "nope", 1)])
    code = main(["eval", "retrieval", "--model", str(tiny_model_path), "--data", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "corpus id 'nope' is not in corpus.jsonl" in err


def test_evaluator_takes_bm25_and_hybrid_specs(beir) -> None:
    pytest.importorskip("bm25s")
    pytest.importorskip("Stemmer")
    lexical = RetrievalEvaluator(beir, index_spec="bm25", k=10, recall_at=(1, 10))
    run = lexical.search(lookup_for(lexical.data))
    # "the cat sat" and "a dog runs" share words with d1 and d2 alone ("the", "a" are stop words; "cats" stems)
    assert set(run["q1"]) == {"d1"} and set(run["q2"]) == {"d2"}
    assert lexical(lookup_for(lexical.data))["recall@1"] == pytest.approx(75.0)  # q1: 1 of 2 relevant; q2: 1 of 1
    hybrid = RetrievalEvaluator(beir, index_spec="hybrid:faiss:Flat", k=10, recall_at=(1, 10))
    run = hybrid.search(lookup_for(hybrid.data))
    assert len(run["q1"]) == len(CORPUS) and run["q1"]["d1"] == pytest.approx(2 / 61)  # first in both lists
