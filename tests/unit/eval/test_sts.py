"""STS evaluation: Spearman of cosine similarity, SentEval style."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from embedkit.errors import DataError
from embedkit.eval import STSEvaluator, sts_spearman


class LookupEncoder:
    """Maps each text to a fixed vector."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def encode(self, texts, batch_size: int = 64) -> np.ndarray:
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def write_scored(path, rows) -> None:
    path.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for a, b, s in rows))


def test_sts_spearman_against_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b, gold = rng.normal(size=(30, 5)), rng.normal(size=(30, 5)), rng.uniform(0, 5, 30)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert sts_spearman(a, b, gold) == pytest.approx(spearmanr(cosine, gold).statistic * 100)


def test_perfect_and_reversed_orderings(tmp_path) -> None:
    encoder = LookupEncoder({"x": [1, 0], "a": [1, 0], "b": [1, 1], "c": [0, 1]})
    write_scored(tmp_path / "good.jsonl", [("x", "a", 5), ("x", "b", 3), ("x", "c", 0)])
    write_scored(tmp_path / "bad.jsonl", [("x", "a", 0), ("x", "b", 3), ("x", "c", 5)])
    assert STSEvaluator(tmp_path / "good.jsonl")(encoder) == pytest.approx({"spearman": 100})  # one name, not two
    results = STSEvaluator(tmp_path)(encoder)
    assert results == pytest.approx({"bad/spearman": -100, "good/spearman": 100, "spearman": 0})


def test_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="file not found"):
        STSEvaluator(tmp_path / "none.jsonl")
    with pytest.raises(DataError, match="no STS files"):
        STSEvaluator(tmp_path)
    write_scored(tmp_path / "one.jsonl", [("x", "a", 5)])
    with pytest.raises(DataError, match="at least 2"):
        STSEvaluator(tmp_path / "one.jsonl")


def test_gold_scores_all_equal_are_an_error_not_nan(tmp_path) -> None:
    write_scored(tmp_path / "flat.jsonl", [("x", "a", 3), ("x", "b", 3.0), ("x", "c", 3)])
    with pytest.raises(DataError, match=r"flat.jsonl: every gold score is 3(\.0)?: Spearman correlation needs at least "
                                        "two different scores"):
        STSEvaluator(tmp_path / "flat.jsonl")
