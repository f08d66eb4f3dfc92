"""Hard-negative mining runs the in-batch filter steps, named by the same step tables: same scores, same
keep/drop decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embedkit.data import Examples
from embedkit.data.collate import text_ids
from embedkit.errors import ConfigError, DataError
from embedkit.index import IndexMismatchError, build_index
from embedkit.losses import build_loss
from embedkit.losses.infonce import batch_scores, cosine_table
from embedkit.losses.steps import (
    MarginFilter,
    MaskDuplicates,
    RankWindow,
    ScoreCeiling,
    TopKHardest,
    apply_steps,
    build_step,
    loss_steps,
)
from embedkit.mining import MiningWarning, filter_candidates, mine_hard_negatives
from embedkit.mining.hard_negatives import DEFAULT_STEPS, SEARCH_HEADROOM, mining_steps, search_depth
from embedkit.types import EmbeddedBatch, Example, Kind

DIM = 8


class TableEncoder:
    """An encoder that looks each text (after its prompt) up in a table of vectors, so that every score is known
    exactly."""

    def __init__(self, vectors: dict[str, np.ndarray], seed: int = 0, prompts: dict[str, str] | None = None) -> None:
        self.vectors = vectors
        self.name = f"table-{seed}"
        self.dim = DIM
        self.prompts = prompts or {}
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(DIM, DIM)  # only its weights matter: they are the fingerprint

    def encode(self, texts, batch_size=32, normalize=False, show_progress=None, *, prompt=None) -> np.ndarray:
        vectors = np.stack([self.vectors[(prompt or "") + text] for text in texts]).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if normalize else vectors


def _guide(vectors: dict[str, np.ndarray]) -> TableEncoder:
    """A guide model that mostly agrees with the mined one: its vectors are the same plus a little noise."""
    noise = np.random.default_rng(1).standard_normal(DIM)
    return TableEncoder({text: vector + 0.5 * noise for text, vector in vectors.items()}, seed=1)


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


def table_under_test(source: str, window: bool) -> list[dict]:
    """Step tables as a recipe's ``filters`` or mining's ``steps`` name them."""
    filters = [
        {"name": "margin", "margin": 0.05, "mode": "relative", "source": source},
        {"name": "ceiling", "max_score": 0.8, "source": source},
    ]
    return [*filters, {"name": "rank-window", "start": 1, "end": 9}, {"name": "top-k", "k": 4}] if window else filters


@pytest.mark.parametrize("window", [False, True])
@pytest.mark.parametrize("source", ["values", "guide"])
def test_in_batch_steps_and_the_miner_keep_and_drop_the_same_candidates(world, source, window) -> None:
    anchors, positives, negatives, vectors = world
    encoder = TableEncoder(vectors)
    guide = _guide(vectors) if source == "guide" else None
    # the corpus holds every positive (in-batch negatives of the other rows), the negatives and one anchor
    candidates = [*positives, *negatives, anchors[0]]
    embed = lambda model, texts: torch.from_numpy(model.encode(texts, normalize=True))
    steps = loss_steps(table_under_test(source, window))  # built once, as a recipe's loss builds its steps

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
    filtered = apply_steps(table, steps)
    kept_in_batch = filtered.valid & ~filtered.target_mask()
    expected = [{candidates[j] for j in np.flatnonzero(row)} for row in kept_in_batch.numpy()]

    # the miner: retrieve every candidate from an index, then the same steps on its block-diagonal table
    index = build_index(encoder, candidates, spec="torch")
    found = filter_candidates(
        encoder,
        list(zip(anchors, positives, strict=True)),
        index,
        steps,
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
            encoder,
            pairs,
            corpus,
            num_negatives=3,
            steps=[{"name": "margin", "margin": 0.0, "mode": "absolute"}, {"name": "rank-window", "end": 10}],
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
    steps = [{"name": "rank-window", "start": 2, "end": 10}]
    window = mine_hard_negatives(encoder, pairs, index, num_negatives=8, steps=steps)
    draws = [
        mine_hard_negatives(encoder, pairs, index, num_negatives=3, steps=steps, sampling="random", seed=seed)
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
        encoder, pairs, [*positives, *negatives], num_negatives=5, steps=[{"name": "rank-window", "end": 20}]
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
        steps=[{"name": "rank-window", "end": 5}],
    )
    assert len(triplets) == 6 and all(set(row.negatives) <= set(positives) - {row.positive} for row in triplets)


def test_a_collection_with_an_empty_document_is_mined(world, tmp_path) -> None:
    anchors, positives, negatives, vectors = world
    (tmp_path / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": str(i), "text": text}) + "\n" for i, text in enumerate([*positives, "", *negatives]))
    )
    triplets = mine_hard_negatives(
        TableEncoder({**vectors, "": -vectors[anchors[0]]}),
        list(zip(anchors, positives, strict=True)),
        tmp_path / "corpus.jsonl",
        num_negatives=2,
        steps=[{"name": "rank-window", "end": 5}],
    )
    assert len(triplets) == 6 and all(len(row.negatives) == 2 for row in triplets)


def test_bad_mining_requests(world) -> None:
    anchors, positives, negatives, vectors = world
    encoder = TableEncoder(vectors)
    pairs = list(zip(anchors, positives, strict=True))
    window = {"name": "rank-window", "start": 10, "end": 20}
    with pytest.raises(ConfigError, match="cannot keep 20 negatives from the rank window 10:20"):
        mine_hard_negatives(encoder, pairs, negatives, num_negatives=20, steps=[window])
    with pytest.raises(ConfigError, match="cannot keep 5 negatives after a top-k of 3"):
        mine_hard_negatives(encoder, pairs, negatives, steps=[{"name": "top-k", "k": 3}], sampling="random")
    with pytest.raises(ConfigError, match="at most one rank-window step, got 2"):
        mine_hard_negatives(encoder, pairs, negatives, steps=[window, {"name": "rank-window", "end": 8}])
    with pytest.raises(ConfigError, match="filter 'ceiling' needs max_score"):
        mine_hard_negatives(encoder, pairs, negatives, steps=[{"name": "ceiling"}])
    with pytest.raises(ConfigError, match="filters must be a list of tables"):
        mine_hard_negatives(encoder, pairs, negatives, steps={"name": "top-k", "k": 3})
    with pytest.raises(ConfigError, match="unknown sampling 'best'"):
        mine_hard_negatives(encoder, pairs, negatives, sampling="best")
    with pytest.raises(DataError, match="kind 'scored'"):
        mine_hard_negatives(encoder, Examples([Example("a", "b", score=1.0)], Kind.SCORED), negatives)
    with pytest.raises(IndexMismatchError):
        mine_hard_negatives(encoder, pairs, build_index(TableEncoder(vectors, seed=5), negatives))
    with pytest.raises(ConfigError, match="not 'l2'"):
        mine_hard_negatives(encoder, pairs, build_index(encoder, negatives, metric="l2"))


def test_a_bad_margin_mode_is_reported_once_by_the_step(world) -> None:
    anchors, positives, negatives, vectors = world
    pairs = list(zip(anchors, positives, strict=True))
    table = {"name": "margin", "margin": 0.05, "mode": "percent"}
    with pytest.raises(ConfigError) as from_recipe:
        build_step(table)
    with pytest.raises(ConfigError) as from_mining:
        mine_hard_negatives(TableEncoder(vectors), pairs, negatives, steps=[table])
    expected = "filter 'margin': unknown margin mode 'percent'; valid: absolute, relative"
    assert str(from_mining.value) == str(from_recipe.value) == expected


# What mine_hard_negatives returned on the world above before `steps` replaced rank_range=(10, 100),
# margin=("relative", 0.05) and max_score=None (the defaults then): negative numbers, or "p<i>" for positive i.
PREVIOUS_DEFAULT_OUTPUT = {
    "values": [
        [1, 28, "p2", 17, "p3"],
        [1, 19, 17, 18, "p4"],
        [20, 3, "p4", 5, "p0"],
        [7, 27, 2, 14, 1],
        [27, 10, 16, 13, 18],
        [16, 10, "p2", 4, "p0"],
    ],
    "guide": [
        [4, 1, 28, "p2", 17],
        [1, 19, 17, 18, "p4"],
        [6, 20, 3, "p4", 5],
        [27, 2, 14, 1, 4],
        [16, 13, 18, 25, "p2"],
        [16, 10, "p2", 4, "p0"],
    ],
}


@pytest.mark.parametrize("source", ["values", "guide"])
def test_the_default_steps_reproduce_the_previous_defaults(world, source) -> None:
    anchors, positives, negatives, vectors = world
    guide = _guide(vectors) if source == "guide" else None
    pairs = list(zip(anchors, positives, strict=True))
    triplets = mine_hard_negatives(TableEncoder(vectors), pairs, [*positives, *negatives], guide=guide)
    short = lambda text: f"p{text.split()[-1]}" if text.startswith("positive") else int(text.split()[-1])
    assert [[short(text) for text in row.negatives] for row in triplets] == PREVIOUS_DEFAULT_OUTPUT[source]
    assert [dict(table) for table in DEFAULT_STEPS] == [
        {"name": "margin", "margin": 0.05, "mode": "relative"},
        {"name": "rank-window", "start": 10, "end": 100},
    ]


def test_a_recipe_loss_and_the_miner_filter_with_the_same_table(world) -> None:
    """One ``filters`` table: the loss a recipe builds from it keeps, in-batch, exactly the negatives that
    mining with it as ``steps`` chooses from (hardest first), over the same texts."""
    anchors, positives, negatives, vectors = world
    table = [{"name": "ceiling", "max_score": 0.7}, {"name": "margin", "margin": 0.1, "mode": "absolute"}]
    encoder = TableEncoder(vectors)
    candidates = [*positives, *negatives]
    loss = build_loss("infonce", filters=table)
    scores = batch_scores(
        EmbeddedBatch(
            anchors=torch.from_numpy(encoder.encode(anchors, normalize=True)),
            candidates=torch.from_numpy(encoder.encode(candidates, normalize=True)),
            anchor_groups=text_ids(anchors),
            candidate_groups=text_ids(candidates),
        )
    )
    kept = apply_steps(scores, loss.steps)
    kept_negatives = kept.valid & ~kept.target_mask()
    # no rank window: mining searches SEARCH_HEADROOM * 2 = 40 deep, the whole corpus of 36 texts
    pairs = list(zip(anchors, positives, strict=True))
    mined = mine_hard_negatives(encoder, pairs, candidates, num_negatives=2, steps=table)
    assert len(mined) > 0
    for row in mined:
        i = anchors.index(row.anchor)
        order = kept.values[i].masked_fill(~kept_negatives[i], float("-inf")).argsort(descending=True)
        assert list(row.negatives) == [candidates[j] for j in order[:2]]
    assert kept_negatives.sum(dim=1).lt(2).sum() == 6 - len(mined)  # the rows left out kept fewer in-batch too


def test_a_guide_judges_margins_and_ceilings_that_name_no_source(world) -> None:
    anchors, positives, negatives, vectors = world
    encoder, guide = TableEncoder(vectors), _guide(vectors)
    pairs = list(zip(anchors, positives, strict=True))
    corpus = [*positives, *negatives]
    margin = {"name": "margin", "margin": 0.05, "mode": "relative"}
    window = {"name": "rank-window", "end": 10}

    def mine(steps: list[dict], guide: TableEncoder | None) -> list[tuple[str, ...]]:
        triplets = mine_hard_negatives(encoder, pairs, corpus, num_negatives=3, steps=steps, guide=guide)
        return [row.negatives for row in triplets]

    guided = mine([margin, window], guide)
    assert guided == mine([{**margin, "source": "guide"}, window], guide)
    assert guided != mine([margin, window], None)
    # a step's own source wins: "values" with a guide mines as without one
    assert mine([{**margin, "source": "values"}, window], guide) == mine([margin, window], None)
    ceiling = mining_steps([{"name": "ceiling", "max_score": 0.9}], guided=True)[1]
    assert isinstance(ceiling, ScoreCeiling) and ceiling.source == "guide"


def _prompted(vectors: dict[str, np.ndarray], anchors: list[str], seed: int = 0) -> TableEncoder:
    """The table encoder of ``vectors`` with prompts: it knows anchors only after "q: " and every other text only
    after "d: ", so a text embedded after the wrong prompt fails the lookup."""
    table = {("q: " if text in anchors else "d: ") + text: vector for text, vector in vectors.items()}
    return TableEncoder(table, seed=seed, prompts={"query": "q: ", "document": "d: "})


def test_mining_embeds_anchors_as_queries_and_documents_as_documents(world) -> None:
    anchors, positives, negatives, vectors = world
    pairs = list(zip(anchors, positives, strict=True))
    corpus = [*positives, *negatives]
    steps = [{"name": "margin", "margin": 0.05, "mode": "relative"}, {"name": "rank-window", "end": 10}]
    plain = mine_hard_negatives(TableEncoder(vectors), pairs, corpus, num_negatives=3, steps=steps)
    encoder = _prompted(vectors, anchors)
    index = build_index(encoder, corpus)
    assert index.manifest.document_prompt == "d: "
    guide = _guide(vectors)
    guided = mine_hard_negatives(TableEncoder(vectors), pairs, corpus, num_negatives=3, steps=steps, guide=guide)
    guide_with_prompts = _prompted(guide.vectors, anchors, seed=1)
    for mined in (
        mine_hard_negatives(encoder, pairs, corpus, num_negatives=3, steps=steps),
        mine_hard_negatives(encoder, pairs, index, num_negatives=3, steps=steps),
    ):
        assert [row.negatives for row in mined] == [row.negatives for row in plain]
    with_guide = mine_hard_negatives(encoder, pairs, corpus, num_negatives=3, steps=steps, guide=guide_with_prompts)
    assert [row.negatives for row in with_guide] == [row.negatives for row in guided]


def test_mining_steps_frame_the_table_with_duplicates_and_top_k() -> None:
    steps = mining_steps(DEFAULT_STEPS, guided=False, top_k=5)
    assert [type(step) for step in steps] == [MaskDuplicates, MarginFilter, RankWindow, TopKHardest]
    assert (steps[1].margin, steps[1].mode, steps[1].source) == (0.05, "relative", "values")
    assert (steps[2].start, steps[2].end, steps[3].k) == (10, 100, 5)
    assert [type(step) for step in mining_steps((), guided=False)] == [MaskDuplicates]


def test_the_search_depth_covers_the_rank_window() -> None:
    # the window's end, plus the anchor's own text and its known positives (dropped by duplicate masking)
    assert search_depth(RankWindow(10, 100), num_negatives=5, most_positives=2) == 100 + 2 + 1
    # no end: room for SEARCH_HEADROOM candidates per negative past the start
    assert search_depth(None, num_negatives=5, most_positives=1) == SEARCH_HEADROOM * 5 + 2
    assert search_depth(RankWindow(10), num_negatives=3, most_positives=1) == 10 + SEARCH_HEADROOM * 3 + 2


@pytest.fixture(scope="module")
def wordy_world() -> tuple[list[str], list[str], list[str], dict[str, np.ndarray]]:
    """Anchors, positives and a corpus of texts that share words, so that BM25 finds some documents and not
    others; each text has a random vector."""
    rng = np.random.default_rng(5)
    topics = ["boundary layer", "shock wave", "heat transfer", "wing flutter"]
    corpus = [f"{topics[i % 4]} {topics[(3 * i + 1) % 4].split()[0]} report{i:02d}" for i in range(32)]
    anchors = [f"question about {topic}" for topic in topics[:3]]
    positives = corpus[:3]
    vectors = {text: rng.standard_normal(DIM) for text in [*corpus, *anchors]}
    return anchors, positives, corpus, vectors


@pytest.mark.parametrize("spec", ["bm25", "hybrid:torch"])
def test_a_text_index_picks_the_candidates_and_the_model_scores_them(wordy_world, spec) -> None:
    pytest.importorskip("bm25s")
    pytest.importorskip("Stemmer")
    anchors, positives, corpus, vectors = wordy_world
    encoder = TableEncoder(vectors)
    index = build_index(encoder if spec != "bm25" else None, corpus, spec=spec)
    found = filter_candidates(encoder, list(zip(anchors, positives, strict=True)), index, mining_steps([], guided=False), 12)
    retrieved = index.search_internal(anchors, 12, embeddings=encoder.encode(anchors, normalize=True))[1]
    unit = {t: v / np.linalg.norm(v) for t, v in vectors.items()}
    for row, anchor in enumerate(anchors):
        valid = found.internal[row] >= 0
        assert set(found.internal[row][valid]) == set(retrieved[row][retrieved[row] >= 0])  # the index's pool
        expected = [unit[anchor] @ unit[corpus[i]] for i in found.internal[row][valid]]
        np.testing.assert_allclose(found.scores[row][valid], expected, rtol=1e-5)  # the model's cosine
        assert (np.diff(found.scores[row][valid]) <= 0).all() and (found.scores[row][~valid] == -np.inf).all()
    if spec == "bm25":  # BM25 leaves out what shares no word with the anchor
        assert (found.internal >= 0).sum(axis=1).max() < len(corpus)


def test_mining_through_a_hybrid_spec(wordy_world) -> None:
    pytest.importorskip("bm25s")
    pytest.importorskip("Stemmer")
    anchors, positives, corpus, vectors = wordy_world
    triplets = mine_hard_negatives(
        TableEncoder(vectors), list(zip(anchors, positives, strict=True)), corpus, num_negatives=2,
        steps=[{"name": "rank-window", "end": 8}], spec="hybrid:fusion=convex,alpha=0.5:faiss:Flat",
    )
    unit = {t: v / np.linalg.norm(v) for t, v in vectors.items()}
    assert len(triplets) == 3
    for row in triplets:
        scores = [unit[row.anchor] @ unit[n] for n in row.negatives]
        assert set(row.negatives) <= set(corpus) - {row.positive} and scores == sorted(scores, reverse=True)
