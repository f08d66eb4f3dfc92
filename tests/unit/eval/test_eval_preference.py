"""Preference evaluation: accuracy with a Wilson interval, mean margin, calibration, and the command line."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from embedkit.cli.eval import register
from embedkit.encoders import load_encoder
from embedkit.encoders.reward import RewardModel
from embedkit.errors import ConfigError, DataError, EmbedkitError
from embedkit.eval.preference import PreferenceEvaluator, preference_report, wilson_interval
from embedkit.losses.preference import RewardModelObjective


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_report_by_hand() -> None:
    chosen, rejected = np.array([2.0, 0.0, 1.0, -1.0]), np.array([0.0, 0.0, 3.0, -1.5])
    report = preference_report(chosen, rejected, "reward", n_bins=2)
    # margins 2, 0 (a tie, half right), -2, 0.5
    assert report.accuracy == pytest.approx(100 * 2.5 / 4) and report.ties == 1 and report.n == 4
    assert report.mean_margin == pytest.approx(0.125)
    # confidence max(p, 1 - p): 0.881, 0.5, 0.881, 0.622; bins [0.5, 0.75) and [0.75, 1]
    low_bin = abs((0.5 + 1) / 2 - (0.5 + sigmoid(0.5)) / 2)
    high_bin = abs((1 + 0) / 2 - sigmoid(2))
    assert report.ece == pytest.approx(100 * (2 / 4 * low_bin + 2 / 4 * high_bin))
    assert [b.count for b in report.bins] == [2, 2] and report.bins[1].accuracy == 50  # percent, as the accuracy
    assert [(b.lower, b.upper) for b in report.bins] == [(50, 75), (75, 100)]
    assert report.bins[1].confidence == pytest.approx(100 * sigmoid(2))
    assert report.log_loss == pytest.approx(np.mean([-math.log(sigmoid(m)) for m in (2, 0, -2, 0.5)]))
    low, high = wilson_interval(2.5, 4)
    assert (report.accuracy_low, report.accuracy_high) == pytest.approx((100 * low, 100 * high))


def test_wilson_interval_reference_values() -> None:
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook 8 of 10
    assert wilson_interval(0, 10)[0] == 0 and wilson_interval(10, 10)[1] == pytest.approx(1)


def test_similarity_probabilities_use_the_temperature() -> None:
    report = preference_report(np.array([0.6]), np.array([0.5]), "similarity", scale=0.05, n_bins=10)
    assert report.log_loss == pytest.approx(-math.log(sigmoid(0.1 / 0.05)))
    # an empty bin has no confidence or accuracy, rather than a NaN that JSON cannot hold
    assert report.bins[0].count == 0 and report.bins[0].confidence is None and report.bins[0].accuracy is None


def test_counts_are_integers_among_the_scores() -> None:
    metrics = preference_report(np.array([1.0, 0.0]), np.array([0.0, 0.0]), "reward").metrics()
    assert metrics["n"] == 2 and type(metrics["n"]) is int and type(metrics["ties"]) is int
    assert type(metrics["accuracy"]) is float


ROWS = [
    {"prompt": "p1", "chosen": "good", "rejected": "bad"},
    {"prompt": "p2", "chosen": "fine", "rejected": "bad"},
    {"prompt": "p3", "chosen": "bad", "rejected": "good"},
]
VECTORS = {"p1": [1.0, 0.0], "p2": [0.0, 1.0], "p3": [1.0, 1.0],
           "good": [1.0, 0.2], "fine": [0.1, 1.0], "bad": [-1.0, 0.5]}


class TableEncoder:
    """An encoder whose embeddings are looked up in a table."""

    name = "table"

    def encode(self, texts, batch_size: int = 32, normalize: bool = False) -> np.ndarray:
        return np.array([VECTORS[t] for t in texts], dtype=np.float32)


class LengthScorer:
    """A 'reward model' that prefers longer replies."""

    def score(self, prompts, responses, batch_size: int = 32) -> np.ndarray:
        return np.array([len(r) for r in responses], dtype=np.float32)


@pytest.fixture
def data(tmp_path):
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return tmp_path / "prefs.jsonl"


def cosine(a: str, b: str) -> float:
    x, y = np.array(VECTORS[a]), np.array(VECTORS[b])
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def test_similarity_mode(data) -> None:
    evaluator = PreferenceEvaluator(data, prompt_truncation="right")
    metrics = evaluator(TableEncoder())
    margins = [cosine(r["prompt"], r["chosen"]) - cosine(r["prompt"], r["rejected"]) for r in ROWS]
    assert metrics["accuracy"] == pytest.approx(100 * sum(m > 0 for m in margins) / 3)
    assert metrics["mean_margin"] == pytest.approx(np.mean(margins))
    assert evaluator.primary_metric == "accuracy"


def test_left_truncation_keeps_the_end_of_long_prompts(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32", max_seq_length=6)
    seen: list[str] = []
    original = encoder.encode
    encoder.encode = lambda texts, **kw: (seen.extend(texts), original(texts, **kw))[1]
    row = {"prompt": "the cat sat on the mat the sun rises", "chosen": "a dog", "rejected": "rain"}
    (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n")
    PreferenceEvaluator(tmp_path / "p.jsonl")(encoder)
    assert "mat the sun rises" in seen  # 6 tokens less [CLS] and [SEP]: the last 4 words
    seen.clear()
    PreferenceEvaluator(tmp_path / "p.jsonl", prompt_truncation="right")(encoder)
    assert row["prompt"] in seen  # left to the encoder, which keeps the start


def test_reward_mode(data, tiny_model_path) -> None:
    metrics = PreferenceEvaluator(data, mode="reward")(LengthScorer())
    assert metrics["accuracy"] == pytest.approx(100 * (1 + 1 + 0) / 3)  # good > bad, fine > bad, bad < good
    assert metrics["mean_margin"] == pytest.approx((1 + 1 - 1) / 3)

    encoder = load_encoder(tiny_model_path, precision="fp32")
    head = RewardModelObjective(dim=encoder.dim).head
    with_head = PreferenceEvaluator(data, mode="reward", reward_head=head)(encoder)
    assert with_head == PreferenceEvaluator(data, mode="reward")(RewardModel(encoder, head))


def test_reward_mode_without_a_reward_head_is_a_clear_error(data, tiny_model_path) -> None:
    with pytest.raises(EmbedkitError, match="has no reward head"):
        PreferenceEvaluator(data, mode="reward")(load_encoder(tiny_model_path, precision="fp32"))


def test_bad_settings_and_data(data, tmp_path) -> None:
    with pytest.raises(ConfigError, match="valid: similarity, reward"):
        PreferenceEvaluator(data, mode="votes")
    with pytest.raises(ConfigError, match="truncation"):
        PreferenceEvaluator(data, prompt_truncation="middle")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:1: missing column 'rejected'"):
        PreferenceEvaluator(tmp_path / "bad.jsonl")


def parser() -> argparse.ArgumentParser:
    """The ``eval`` command as embedkit.cli.build_parser() wires it."""
    root = argparse.ArgumentParser(prog="embedkit")
    register(root.add_subparsers(dest="command", required=True))
    return root


def test_cli_eval_preference(data, tiny_model_path, capsys) -> None:
    args = parser().parse_args(["eval", "preference", "--model", str(tiny_model_path), "--data", str(data),
                                "--precision", "fp32", "--json"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "preference" and result["mode"] == "similarity" and result["n"] == 3
    assert 0 <= result["accuracy"] <= 100 and len(result["bins"]) == 10
    assert result["scale"] == 100 and result["unscaled"] == ["log_loss", "mean_margin", "n", "ties"]
    assert all(50 <= b["lower"] < b["upper"] <= 100 for b in result["bins"])  # the bins are in percent too

    args = parser().parse_args(["eval", "preference", "--model", str(tiny_model_path), "--data", str(data),
                                "--mode", "reward"])
    with pytest.raises(EmbedkitError, match="no reward head"):
        args.func(args)


def test_cli_eval_preference_reward_model(data, tiny_model_path, tmp_path, capsys) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    RewardModel(encoder, RewardModelObjective(dim=encoder.dim).head).save(tmp_path / "rm")
    args = parser().parse_args(["eval", "preference", "--model", str(tmp_path / "rm"), "--data", str(data),
                                "--mode", "reward", "--precision", "fp32"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("accuracy")
