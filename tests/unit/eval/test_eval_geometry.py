"""Geometry: alignment, uniformity and anisotropy; the geometry evaluator, alone and combined, during training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from embedkit.errors import ConfigError, DataError
from embedkit.eval import CombinedEvaluator, GeometryEvaluator, STSEvaluator, alignment, anisotropy, uniformity


class LookupEncoder:
    """Maps each text to a fixed vector."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def encode(self, texts, batch_size: int = 64) -> np.ndarray:
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_alignment_of_identical_and_opposite_pairs() -> None:
    x = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert alignment(x, 3 * x) == pytest.approx(0.0)  # scale does not matter: embeddings are normalised
    assert alignment(x, -x) == pytest.approx(4.0)  # ||u - (-u)||^2 = 4 on the unit sphere


def test_uniformity_matches_the_definition() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    pairs = [(i, j) for i in range(20) for j in range(i + 1, 20)]
    expected = math.log(np.mean([math.exp(-2 * np.sum((u[i] - u[j]) ** 2)) for i, j in pairs]))
    assert uniformity(x) == pytest.approx(expected)
    # collapsed embeddings are the least uniform possible: log E exp(0) = 0
    assert uniformity(np.ones((5, 3))) == pytest.approx(0.0)


def test_uniformity_does_not_underflow_for_well_spread_points() -> None:
    # antipodal points: exp(-2 * 4 * t) for large t would underflow a naive mean
    assert uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]]), t=200) == pytest.approx(-800.0)


def test_anisotropy_is_the_mean_pairwise_cosine() -> None:
    assert anisotropy(np.eye(4)) == pytest.approx(0.0)
    assert anisotropy(np.ones((3, 5))) == pytest.approx(1.0)
    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert anisotropy(x) == pytest.approx((math.sqrt(0.5) + 0.0 + math.sqrt(0.5)) / 3)


def test_evaluator_takes_high_scored_pairs_as_positives(tmp_path) -> None:
    write_jsonl(tmp_path / "sts.jsonl", [
        {"sentence1": "a", "sentence2": "b", "score": 5.0},
        {"sentence1": "a", "sentence2": "c", "score": 1.0},
        {"sentence1": "c", "sentence2": "d", "score": 4.0},
    ])
    evaluator = GeometryEvaluator(tmp_path / "sts.jsonl")
    assert evaluator.positive_pairs == [("a", "b"), ("c", "d")] and evaluator.sample == ["a", "b", "c", "d"]
    table = {"a": [1, 0], "b": [1, 0], "c": [0, 1], "d": [0, -1]}
    result = evaluator(LookupEncoder(table))
    vectors = np.array([table[t] for t in "abcd"], dtype=float)
    assert result["alignment"] == pytest.approx((0 + 4) / 2)
    assert result["uniformity"] == pytest.approx(uniformity(vectors))
    assert result["anisotropy"] == pytest.approx(anisotropy(vectors))


def test_pairs_file_and_separate_sentence_sample(tmp_path) -> None:
    write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": "a", "positive": "b"}])
    (tmp_path / "s.txt").write_text("x\ny\nz\nw\n")
    evaluator = GeometryEvaluator(tmp_path / "pairs.jsonl", sentences=tmp_path / "s.txt", max_sentences=3, seed=1)
    assert evaluator.positive_pairs == [("a", "b")]
    assert len(evaluator.sample) == 3 and set(evaluator.sample) <= {"w", "x", "y", "z"}
    table = {t: [float(i), 1.0] for i, t in enumerate("abwxyz")}
    assert set(evaluator(LookupEncoder(table))) == {"alignment", "uniformity", "anisotropy"}


def test_bad_inputs(tmp_path) -> None:
    write_jsonl(tmp_path / "low.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 1.0}] * 2)
    with pytest.raises(DataError, match="no positive pairs"):
        GeometryEvaluator(tmp_path / "low.jsonl")
    write_jsonl(tmp_path / "same.jsonl", [{"anchor": "a", "positive": "a"}])
    with pytest.raises(DataError, match="at least 2 distinct sentences"):
        GeometryEvaluator(tmp_path / "same.jsonl")
    with pytest.raises(ConfigError, match="max_sentences"):
        GeometryEvaluator(tmp_path / "same.jsonl", max_sentences=1)
    with pytest.raises(DataError, match="missing.jsonl"):
        GeometryEvaluator(tmp_path / "missing.jsonl")
    (tmp_path / "s.txt").write_text("only one\n")
    with pytest.raises(DataError, match="geometry needs scored or pairs data"):
        GeometryEvaluator(tmp_path / "s.txt")


def test_combined_evaluator_merges_and_keeps_the_first_primary_metric(tmp_path) -> None:
    write_jsonl(tmp_path / "sts.jsonl", [
        {"sentence1": "a", "sentence2": "b", "score": 5.0},
        {"sentence1": "a", "sentence2": "c", "score": 0.0},
    ])
    encoder = LookupEncoder({"a": [1, 0], "b": [1, 0.1], "c": [0, 1]})
    sts, geometry = STSEvaluator(tmp_path / "sts.jsonl"), GeometryEvaluator(tmp_path / "sts.jsonl")
    combined = CombinedEvaluator([sts, geometry])
    assert combined.primary_metric == "spearman" and combined.higher_is_better
    assert set(combined(encoder)) == {"spearman", "alignment", "uniformity", "anisotropy"}

    prefixed = CombinedEvaluator({"geo": geometry, "dev": sts})
    assert prefixed.primary_metric == "geo/uniformity" and not prefixed.higher_is_better
    assert "dev/spearman" in prefixed(encoder)

    with pytest.raises(ConfigError, match="two evaluators report 'spearman'"):
        CombinedEvaluator([sts, sts])(encoder)
    with pytest.raises(ConfigError, match="at least one"):
        CombinedEvaluator([])


def test_geometry_is_logged_during_training(tiny_model_path, tmp_path) -> None:
    from embedkit import FitSettings, fit, load_encoder, read_examples

    (tmp_path / "s.txt").write_text("".join(f"the cat sat on the mat {i}\n" for i in range(8)))
    write_jsonl(tmp_path / "dev.jsonl", [
        {"sentence1": "the cat sat", "sentence2": "the cat sat on the mat", "score": 4.5},
        {"sentence1": "a dog runs", "sentence2": "the train leaves at noon", "score": 0.5},
        {"sentence1": "the sun rises", "sentence2": "the sun rises in the east", "score": 4.0},
    ])
    from embedkit import build_loss

    evaluator = CombinedEvaluator([STSEvaluator(tmp_path / "dev.jsonl"), GeometryEvaluator(tmp_path / "dev.jsonl")])
    settings = FitSettings(output_dir=tmp_path / "run", batch_size=4, max_steps=2, eval_steps=1, show_progress=False)
    fit(load_encoder(tiny_model_path, device="cpu"), read_examples(tmp_path / "s.txt"), build_loss("simcse-unsup"),
        settings, evaluator=evaluator)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = [record["eval"] for record in records if "eval" in record]
    assert len(evals) == 3 and all({"spearman", "alignment", "uniformity", "anisotropy"} <= set(e) for e in evals)
    # every evaluation says its scale, and which of its metrics have units of their own
    assert all((r["scale"], r["unscaled"]) == (100, ["alignment", "anisotropy", "uniformity"])
               for r in records if "eval" in r)


def test_cli_geometry_json_names_its_metrics_unscaled(capsys, tiny_model_path, tmp_path) -> None:
    from conftest import TINY_TEXTS

    from embedkit.cli import main

    write_jsonl(tmp_path / "sts.jsonl", [{"sentence1": a, "sentence2": b, "score": 4.5 if i % 2 else 1.0}
                                         for i, (a, b) in enumerate(zip(TINY_TEXTS, TINY_TEXTS[1:], strict=False))])
    assert main(["eval", "geometry", "--model", str(tiny_model_path), "--data", str(tmp_path / "sts.jsonl"),
                 "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["scale"] == 100 and document["unscaled"] == ["alignment", "anisotropy", "uniformity"]
    assert (document["positive_pairs"], document["sentences"]) == (3, 8)
