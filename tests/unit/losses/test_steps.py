"""Filter steps against a readable loop over the score table."""

from __future__ import annotations

import pytest
import torch

from embedkit.errors import ConfigError
from embedkit.losses import MarginFilter, MaskDuplicates, RankWindow, ScoreCeiling, TopKHardest, apply_steps
from embedkit.types import Scores


def table(values, targets=None, guide=None) -> Scores:
    values = torch.tensor(values, dtype=torch.float32)
    targets = torch.arange(values.shape[0]) if targets is None else torch.tensor(targets)
    scores = Scores.from_values(values, targets)
    return scores.replace(guide=None if guide is None else torch.tensor(guide, dtype=torch.float32))


VALUES = [[0.8, 0.9, 0.7, 0.1, 0.76],
          [0.2, 0.5, 0.45, 0.5, -0.3]]


def loop_margin(values, margin, mode):
    keep = []
    for i, row in enumerate(values):
        p = row[i]
        limit = p - margin if mode == "absolute" else p * (1 - margin)
        keep.append([j == i or s <= limit for j, s in enumerate(row)])
    return keep


@pytest.mark.parametrize("mode,margin", [("absolute", 0.0), ("absolute", 0.05), ("relative", 0.05), ("relative", 0.0)])
def test_margin_filter_matches_loop(mode, margin) -> None:
    kept = MarginFilter(margin, mode)(table(VALUES)).valid.tolist()
    assert kept == loop_margin(VALUES, margin, mode)


def test_margin_filter_on_guide_scores_ignores_model_scores() -> None:
    guide = [[0.9, 0.95, 0.1, 0.1, 0.1], [0.1, 0.9, 0.1, 0.1, 0.1]]
    kept = MarginFilter(0.0, "absolute", source="guide")(table(VALUES, guide=guide)).valid.tolist()
    assert kept == [[True, False, True, True, True], [True, True, True, True, True]]
    with pytest.raises(ConfigError, match="no guide"):
        MarginFilter(0.0, source="guide")(table(VALUES))


def test_score_ceiling() -> None:
    kept = ScoreCeiling(0.75)(table(VALUES)).valid.tolist()
    assert kept == [[True, False, True, True, False], [True, True, True, True, True]]


def test_top_k_hardest_counts_only_valid_negatives() -> None:
    scores = ScoreCeiling(0.85)(table(VALUES))  # drops 0.9 in row 0 first
    kept = TopKHardest(2)(scores).valid.tolist()
    # row 1 negatives by score: 0.5 (col 3), 0.45 (col 2), 0.2 (col 0), -0.3 (col 4)
    assert kept == [[True, False, True, False, True], [False, True, True, True, False]]


def test_rank_window() -> None:
    kept = RankWindow(1, 3)(table(VALUES)).valid.tolist()
    # row 0 negatives by score: 0.9 (rank 0), 0.76 (1), 0.7 (2), 0.1 (3)
    assert kept == [[True, False, True, False, True], [True, True, True, False, False]]


def test_steps_never_drop_targets_and_compose() -> None:
    scores = apply_steps(table(VALUES, targets=[4, 1]), [MarginFilter(0.5), ScoreCeiling(-1.0), TopKHardest(1)])
    assert scores.valid[0, 4] and scores.valid[1, 1]
    assert scores.valid.sum() == 2


def test_mask_duplicates_needs_groups() -> None:
    with pytest.raises(ConfigError, match="anchor_groups"):
        MaskDuplicates()(table(VALUES))


@pytest.mark.parametrize("make,match", [
    (lambda: MarginFilter(0.1, "percent"), "valid: absolute, relative"),
    (lambda: MarginFilter(1.5, "relative"), r"\[0, 1\)"),
    (lambda: MarginFilter(0.1, source="teacher"), "valid: values, guide"),
    (lambda: TopKHardest(0), "at least 1"),
    (lambda: RankWindow(5, 5), "start < end"),
])
def test_bad_configurations(make, match) -> None:
    with pytest.raises(ConfigError, match=match):
        make()
