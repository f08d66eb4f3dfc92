"""Pair selection by response-embedding similarity (REAL), on hand-built embeddings, and its command."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from embedkit.cli.mine import register
from embedkit.errors import ConfigError, DataError
from embedkit.mining import read_response_groups, select_pairs

# unit vectors at 0, 10, 90 and 180 degrees: cos(a, b) = 0.985, cos(a, c) = 0, cos(a, d) = -1, cos(b, d) = -0.985
ANGLES = {"a": 0, "b": 10, "c": 90, "d": 180, "x": 0, "y": 45}


class AngleEncoder:
    name = "angles"

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts, batch_size: int = 32) -> np.ndarray:
        self.calls += 1
        radians = np.deg2rad([ANGLES[t] for t in texts])
        return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


GROUPS = {"q1": ["a", "b", "c", "d"], "q2": ["x", "y"]}


def test_dissimilar_takes_the_least_similar_pairs() -> None:
    encoder = AngleEncoder()
    pairs = select_pairs(encoder, GROUPS, strategy="dissimilar", per_prompt=2)
    assert [(p.prompt, p.a, p.b) for p in pairs] == [("q1", "a", "d"), ("q1", "b", "d"), ("q2", "x", "y")]
    assert pairs[0].similarity == pytest.approx(-1) and pairs[1].similarity == pytest.approx(np.cos(np.deg2rad(170)))
    assert encoder.calls == 1  # every response of every prompt in one encode call


def test_similar_takes_the_most_similar_pairs() -> None:
    pairs = select_pairs(AngleEncoder(), GROUPS, strategy="similar", per_prompt=1)
    assert [(p.prompt, p.a, p.b) for p in pairs] == [("q1", "a", "b"), ("q2", "x", "y")]


def test_random_is_seeded_and_draws_distinct_pairs() -> None:
    first = select_pairs(AngleEncoder(), GROUPS, strategy="random", per_prompt=3, seed=5)
    assert first == select_pairs(AngleEncoder(), GROUPS, strategy="random", per_prompt=3, seed=5)
    q1 = [(p.a, p.b) for p in first if p.prompt == "q1"]
    assert len(q1) == len(set(q1)) == 3 and all(GROUPS["q1"].index(a) < GROUPS["q1"].index(b) for a, b in q1)
    assert [(p.a, p.b) for p in first if p.prompt == "q2"] == [("x", "y")]  # all a 2-response prompt has
    seeds = {tuple(select_pairs(AngleEncoder(), GROUPS, strategy="random", seed=s)) for s in range(8)}
    assert len(seeds) > 1


def test_identical_responses_are_never_paired() -> None:
    pairs = select_pairs(AngleEncoder(), {"q": ["a", "a", "b"]}, strategy="similar", per_prompt=5)
    assert [(p.a, p.b) for p in pairs] == [("a", "b")]


def test_bad_inputs() -> None:
    with pytest.raises(DataError, match="1 distinct responses"):
        select_pairs(AngleEncoder(), {"q": ["a", "a"]})
    with pytest.raises(ConfigError, match="valid: dissimilar, similar, random"):
        select_pairs(AngleEncoder(), GROUPS, strategy="hardest")
    with pytest.raises(ConfigError, match="per_prompt"):
        select_pairs(AngleEncoder(), GROUPS, per_prompt=0)


def write_rows(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "q", "responses": ["only one"]}, "responses.jsonl:2: 1 distinct responses"),
        ({"prompt": "q", "responses": ["same", "same"]}, "responses.jsonl:2: 1 distinct responses"),
        ({"prompt": "q", "responses": "a, b"}, "responses.jsonl:2: column 'responses' must be a list"),
        ({"prompt": "", "responses": ["a", "b"]}, "responses.jsonl:2: column 'prompt'"),
        ({"prompt": "p", "responses": ["c", "d"]}, "responses.jsonl:2: the prompt of line 1 is repeated"),
    ],
)
def test_reading_response_groups_names_the_bad_line(tmp_path, row, message) -> None:
    write_rows(tmp_path / "responses.jsonl", [{"prompt": "p", "responses": ["a", "b"]}, row])
    with pytest.raises(DataError, match=message):
        read_response_groups(tmp_path / "responses.jsonl")


def test_cli_select_pairs(tiny_model_path, tmp_path, capsys) -> None:
    write_rows(tmp_path / "in.jsonl", [
        {"prompt": "where is the cat?", "responses": ["the cat sat on the mat", "a dog runs", "the cat sat"]},
        {"prompt": "when?", "responses": ["at noon", "the train leaves at noon"]},
    ])
    root = argparse.ArgumentParser(prog="embedkit")
    register(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["select-pairs", "--model", str(tiny_model_path), "--input", str(tmp_path / "in.jsonl"),
                            "--output", str(tmp_path / "out.jsonl"), "--per-prompt", "2", "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out) == {"output": str(tmp_path / "out.jsonl"), "prompts": 2, "pairs": 3}
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["where is the cat?", "where is the cat?", "when?"]
    assert rows[0]["similarity"] <= rows[1]["similarity"] and rows[0]["strategy"] == "dissimilar"
