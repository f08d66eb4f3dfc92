"""Hard-negative mining runs the in-batch filter steps: same scores, same keep/drop decisions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedkit.data import Examples
from embedkit.data.collate import text_ids
from embedkit.errors import ConfigError, DataError
from embedkit.index import IndexMismatchError, build_index
from embedkit.losses.infonce import batch_scores, cosine_table
from embedkit.losses.steps import MarginFilter, MaskDuplicates, RankWindow, ScoreCeiling, TopKHardest, apply_steps
from embedkit.mining import MiningWarning, filter_candidates, mine_hard_negatives
from embedkit.types import EmbeddedBatch, Example, Kind

DIM = 8


class TableEncoder:
    """An encoder that looks each text up in a table of vectors, so that every score is known exactly."""

    def __init__(self, vectors: dict[str, np.ndarray], seed: int = 0) -> None:
        self.vectors = vectors
        self.name = f"table-{seed}"
        self.dim = DIM
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(DIM, DIM)  # only its weights matter: they are the fingerprint

    def encode(self, texts, batch_size=32, normalize=False, show_progress=None) -> np.ndarray:
        vectors = np.stack([self.vectors[text] for text in texts]).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if normalize else vectors


@pytest.fixture(scope="module")
def world() -> tuple[list[str], list[str], list[str], dict[str, np.ndarray]]:
    """6 anchors, their positives (close to them), and 30 negatives at every distance from some anchor."""
    rng = np.random.default_rng(0)
    anchors = [f"anchor {i}" for i in range(6)]
    positives = [f"positive {i}" for i in range(6)]
    negatives = [f"negative {i}" for i in range(30)]
    vectors = {text: rng.standard_normal(DIM) for text in anchors}
    for a, p in zip(anchors, positives, strict=True):
        vectors[p] = vectors[a] + 0.6 * rng.standard_normal(DIM)
    for n in negatives:
        vectors[n] = rng.uniform(0, 1.5) * vectors[anchors[rng.integers(6)]] + 0.8 * rng.standard_normal(DIM)
    return anchors, positives, negatives, vectors


def steps_under_test(source: str, window: bool) -> tuple:
    filters = (MaskDuplicates(), MarginFilter(0.05, "relative", source), ScoreCeiling(0.8, source))
    return (*filters, RankWindow(1, 9), TopKHardest(4)) if window else filters


@pytest.mark.parametrize("window", [False, True])
@pytest.mark.parametrize("source", ["values", "guide"])
def test_in_batch_steps_and_the_miner_keep_and_drop_the_same_candidates(world, source, window) -> None:
    anchors, positives, negatives, vectors = world
    encoder = TableEncoder(vectors)
    guide_vectors = {
        text: vector + 0.5 * np.random.default_rng(1).standard_normal(DIM) for text, vector in vectors.items()
    }
    guide = TableEncoder(guide_vectors, seed=1) if source == "guide" else None
    # the corpus holds every positive (in-batch negatives of the other rows), the negatives and one anchor
    candidates = [*positives, *negatives, anchors[0]]
    embed = lambda model, texts: torch.from_numpy(model.encode(texts, normalize=True))

    # in-batch: one [B, C] table over the same texts, as a training batch would score it
    batch = EmbeddedBatch(
        anchors=embed(encoder, anchors),
        candidates=embed(encoder, candidates),
        anchor_groups=text_ids(anchors),
        candidate_groups=text_ids(candidates),
    )
    table = batch_scores(batch)
    if guide is not None:
        table = table.replace(guide=cosine_table(embed(guide, anchors), embed(guide, candidates)))
    filtered = apply_steps(table, steps_under_test(source, window))
    kept_in_batch = filtered.valid & ~filtered.target_mask()
    expected = [{candidates[j] for j in np.flatnonzero(row)} for row in kept_in_batch.numpy()]

    # the miner: retrieve every candidate from an index, then the same steps on its block-diagonal table
    index = build_index(encoder, candidates, spec="torch")
    found = filter_candidates(
        encoder,
        list(zip(anchors, positives, strict=True)),
        index,
        steps_under_test(source, window),
        k=len(candidates),
        guide=guide,
    )
    texts, _ = index.store.payloads(found.internal)
    mined = [set(row_texts[row_kept]) for row_texts, row_kept in zip(texts, found.kept, strict=True)]
    assert mined == expected
    # the steps did decide something: the filters keep different numbers per row; no row keeps its own texts
    assert len({len(row) for row in mined}) > 1 or window
    assert anchors[0] not in mined[0]
    assert all(positive not in row for positive, row in zip(positives, mined, strict=True))


def test_margins_drop_what_they_should(world) -> None:
    anchors, positives, negatives, vectors = world
    encoder = TableEncoder(vectors)
    index = build_index(encoder, negatives, spec="faiss:Flat")
    pairs = list(zip(anchors, positives, strict=True))
    loose = filter_candidates(encoder, pairs, index, (MaskDuplicates(),), k=30)
    strict = filter_candidates(encoder, pairs, index, (MaskDuplicates(), MarginFilter(0.0, "absolute")), k=30)
    unit = {t: v / np.linalg.norm(v) for t, v in vectors.items()}
    for row, (anchor, positive) in enumerate(pairs):
        positive_score = unit[anchor] @ unit[positive]
        assert loose.kept[row].all()
        np.testing.assert_array_equal(strict.kept[row], strict.scores[row] <= positive_score + 1e-6)


def test_mine_top_negatives_in_score_order(world) -> None:
    anchors, positives, negatives, vectors = world
    # a pair whose positive is the anchor's opposite (cosine -1): every candidate beats it, so the margin drops all
    vectors = {**vectors, "opposite": -vectors[anchors[3]]}
    encoder = TableEncoder(vectors)
    rows = [*zip(anchors, positives, strict=True), (anchors[3], "opposite")]
    pairs = Examples([Example(anchor=a, positive=p) for a, p in rows], Kind.PAIRS)
    corpus = [*positives, *negatives]
    with pytest.warns(MiningWarning, match="1 of 7 pairs kept fewer than 3 negatives"):
        triplets = mine_hard_negatives(
            encoder, pairs, corpus, num_negatives=3, rank_range=(0, 10), margin=("absolute", 0.0)
        )
    assert triplets.kind == Kind.TRIPLETS and [row.positive for row in triplets] == positives
    unit = {t: v / np.linalg.norm(v) for t, v in vectors.items()}
    for row in triplets:
        scores = [unit[row.anchor] @ unit[n] for n in row.negatives]
        assert scores == sorted(scores, reverse=True) and max(scores) <= unit[row.anchor] @ unit[row.positive] + 1e-6
        assert row.positive not in row.negatives and len(set(row.negatives)) == 3
        # "top" takes the hardest: nothing left out scores between the chosen ones and the positive
        others = [unit[row.anchor] @ unit[c] for c in corpus if c not in row.negatives and c != row.positive]
        assert not [s for s in others if scores[0] < s <= unit[row.anchor] @ unit[row.positive]]


def test_random_sampling_is_seeded_and_stays_in_the_window(world) -> None:
    anchors, positives, negatives, vectors = world
    encoder = TableEncoder(vectors)
    pairs = list(zip(anchors, positives, strict=True))
    index = build_index(encoder, negatives)
    window = mine_hard_negatives(encoder, pairs, index, num_negatives=8, rank_range=(2, 10), margin=None)
    draws = [
        mine_hard_negatives(
            encoder, pairs, index, num_negatives=3, rank_range=(2, 10), margin=None, sampling="random", seed=seed
        )
        for seed in (0, 0, 1)
    ]
    assert [row.negatives for row in draws[0]] == [row.negatives for row in draws[1]]
    assert [row.negatives for row in draws[0]] != [row.negatives for row in draws[2]]
    for drawn, full in zip(draws[0], window, strict=True):
        assert set(drawn.negatives) <= set(full.negatives)
        assert list(drawn.negatives) == [n for n in full.negatives if n in drawn.negatives]  # hardest first


def test_known_positives_of_an_anchor_are_never_its_negatives(world) -> None:
    anchors, positives, negatives, vectors = world
    encoder = TableEncoder(vectors)
    pairs = [(anchors[0], positives[0]), (anchors[0], positives[1]), (anchors[1], positives[2])]
    triplets = mine_hard_negatives(
        encoder, pairs, [*positives, *negatives], num_negatives=5, rank_range=(0, 20), margin=None
    )
    for row in triplets[:2]:
        assert not {positives[0], positives[1]} & set(row.negatives)
    assert positives[2] not in triplets[2].negatives


def test_mining_from_the_positives_alone(world) -> None:
    anchors, positives, _, vectors = world
    triplets = mine_hard_negatives(
        TableEncoder(vectors),
        list(zip(anchors, positives, strict=True)),
        num_negatives=2,
        rank_range=(0, 5),
        margin=None,
    )
    assert len(triplets) == 6 and all(set(row.negatives) <= set(positives) - {row.positive} for row in triplets)


def test_bad_mining_requests(world) -> None:
    anchors, positives, negatives, vectors = world
    encoder = TableEncoder(vectors)
    pairs = list(zip(anchors, positives, strict=True))
    with pytest.raises(ConfigError, match="cannot keep 20 negatives from the rank window 10:20"):
        mine_hard_negatives(encoder, pairs, negatives, num_negatives=20, rank_range=(10, 20))
    with pytest.raises(ConfigError, match="unknown sampling 'best'"):
        mine_hard_negatives(encoder, pairs, negatives, sampling="best")
    with pytest.raises(ConfigError, match="unknown margin mode 'percent'"):
        mine_hard_negatives(encoder, pairs, negatives, margin=("percent", 5))
    with pytest.raises(DataError, match="kind 'scored'"):
        mine_hard_negatives(encoder, Examples([Example("a", "b", score=1.0)], Kind.SCORED), negatives)
    with pytest.raises(IndexMismatchError):
        mine_hard_negatives(encoder, pairs, build_index(TableEncoder(vectors, seed=5), negatives))
    with pytest.raises(ConfigError, match="not 'l2'"):
        mine_hard_negatives(encoder, pairs, build_index(encoder, negatives, metric="l2"))
