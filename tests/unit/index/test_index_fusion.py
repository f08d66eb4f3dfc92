"""Fusion of ranked lists: reciprocal rank fusion and the convex combination against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from embedkit.errors import ConfigError
from embedkit.index import convex_fusion, reciprocal_rank_fusion
from embedkit.index.fusion import normalize_scores

NO = -1  # an empty slot


def ids(*rows: list[int]) -> np.ndarray:
    return np.array(rows, dtype=np.int64)


def test_rrf_sums_reciprocal_ranks_and_a_missing_document_adds_nothing() -> None:
    scores, found = reciprocal_rank_fusion([ids([10, 20, 30]), ids([20, 40, NO])], 4)
    # 20: 1/61 + 1/62 (first, second); 10: 1/61; 40: 1/62 (missing from the first list); 30: 1/63
    np.testing.assert_array_equal(found, [[20, 10, 40, 30]])
    np.testing.assert_allclose(scores, [[1 / 61 + 1 / 62, 1 / 61, 1 / 62, 1 / 63]], rtol=1e-6)
    assert scores.dtype == np.float32 and found.dtype == np.int64


def test_rrf_constant_weighs_agreement_against_top_ranks() -> None:
    lists = [ids([1, 2, 3]), ids([4, 5, 3])]  # 3 is third in both lists; 1 and 4 are first in one each
    scores, found = reciprocal_rank_fusion(lists, 5)
    np.testing.assert_array_equal(found, [[3, 1, 4, 2, 5]])
    np.testing.assert_allclose(scores, [[2 / 63, 1 / 61, 1 / 61, 1 / 62, 1 / 62]], rtol=1e-6)
    scores, found = reciprocal_rank_fusion(lists, 5, rrf_k=0.5)  # a small constant lets top ranks win
    np.testing.assert_array_equal(found, [[1, 4, 3, 2, 5]])
    np.testing.assert_allclose(scores, [[1 / 1.5, 1 / 1.5, 2 / 3.5, 1 / 2.5, 1 / 2.5]], rtol=1e-6)


def test_rrf_ties_go_to_the_smaller_id_and_short_lists_are_padded() -> None:
    scores, found = reciprocal_rank_fusion([ids([7, 3], [5, NO]), ids([3, 7], [NO, NO])], 3)
    np.testing.assert_array_equal(found, [[3, 7, NO], [5, NO, NO]])
    np.testing.assert_allclose(scores[0, :2], [1 / 61 + 1 / 62] * 2, rtol=1e-6)
    assert scores[0, 2] == -np.inf and (scores[1, 1:] == -np.inf).all()
    assert reciprocal_rank_fusion([ids([9]), ids([4])], 2)[1].tolist() == [[4, 9]]  # both 1/61


def test_minmax_and_zscore_normalisation() -> None:
    scores = np.array([[0.9, 0.5, 0.1], [10.0, 4.0, -np.inf], [3.0, -np.inf, -np.inf]])
    found = ids([1, 2, 3], [3, 4, NO], [5, NO, NO])
    normalised, floors = normalize_scores(scores, found, "minmax")
    np.testing.assert_allclose(normalised, [[1, 0.5, 0], [1, 0, 0], [1, 0, 0]])  # one result: the best, 1
    np.testing.assert_array_equal(floors, [0, 0, 0])
    normalised, floors = normalize_scores(scores, found, "zscore")
    z = 0.4 / np.sqrt(0.32 / 3)  # mean 0.5, population std sqrt(0.32 / 3)
    np.testing.assert_allclose(normalised, [[z, 0, -z], [1, -1, 0], [0, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(floors, [-z, -1, 0])
    empty, floors = normalize_scores(np.full((1, 2), -np.inf), ids([NO, NO]), "minmax")
    assert (empty == 0).all() and floors.tolist() == [0]
    with pytest.raises(ConfigError, match="unknown score normalisation 'l1'; valid: minmax, zscore"):
        normalize_scores(scores, found, "l1")


DENSE = (np.array([[0.9, 0.5, 0.1]]), ids([1, 2, 3]))
LEXICAL = (np.array([[10.0, 4.0, -np.inf]]), ids([3, 4, NO]))


@pytest.mark.parametrize(
    ("alpha", "normalization", "order", "expected"),
    [
        # min-max: dense 1 -> 1, 2 -> 0.5, 3 -> 0; lexical 3 -> 1, 4 -> 0; missing documents take 0
        (0.5, "minmax", [1, 3, 2, 4], [0.5, 0.5, 0.25, 0.0]),  # 1 and 3 tie: the smaller id first
        (0.8, "minmax", [1, 2, 3, 4], [0.8, 0.4, 0.2, 0.0]),
        (0.0, "minmax", [3, 1, 2, 4], [1.0, 0.0, 0.0, 0.0]),  # BM25 alone; 4 was returned but scores its floor
        # z-scores: dense (z, 0, -z) with z = 1.2247..., lexical (1, -1); missing documents take the list's lowest
        (0.5, "zscore", [1, 3, 2, 4], None),
    ],
)
def test_convex_fusion_closed_forms(alpha, normalization, order, expected) -> None:
    scores, found = convex_fusion(
        [DENSE[0], LEXICAL[0]], [DENSE[1], LEXICAL[1]], [alpha, 1 - alpha], 4, normalization=normalization
    )
    np.testing.assert_array_equal(found, [order])
    if expected is None:
        z = 0.4 / np.sqrt(0.32 / 3)
        expected = [0.5 * z - 0.5, 0.5 - 0.5 * z, -0.5, -0.5 * z - 0.5]
    np.testing.assert_allclose(scores, [expected], atol=1e-6)


def test_convex_fusion_keeps_k_and_pads() -> None:
    scores, found = convex_fusion([DENSE[0], LEXICAL[0]], [DENSE[1], LEXICAL[1]], [0.5, 0.5], 2)
    np.testing.assert_array_equal(found, [[1, 3]])
    scores, found = convex_fusion([DENSE[0], LEXICAL[0]], [DENSE[1], LEXICAL[1]], [0.5, 0.5], 6)
    assert found[0, 4:].tolist() == [NO, NO] and (scores[0, 4:] == -np.inf).all()


def test_bad_fusion_inputs_are_one_line_errors() -> None:
    cases = [
        (lambda: reciprocal_rank_fusion([ids([1])], 0), "k must be a positive integer, got 0"),
        (lambda: reciprocal_rank_fusion([ids([1])], 3, rrf_k=0), "rrf_k must be positive"),
        (lambda: reciprocal_rank_fusion([], 3), "ranked lists of shape"),
        (lambda: reciprocal_rank_fusion([ids([1]), ids([1], [2])], 3), "one row per query"),
        (lambda: convex_fusion([DENSE[0]], [DENSE[1], LEXICAL[1]], [1, 0], 3), "scores of its ids' shape"),
        (lambda: convex_fusion([DENSE[0], LEXICAL[0]], [DENSE[1], LEXICAL[1]], [1], 3), "one non-negative weight"),
        (lambda: convex_fusion([DENSE[0], LEXICAL[0]], [DENSE[1], LEXICAL[1]], [1.5, -0.5], 3), "non-negative"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError, match=message) as error:
            call()
        assert "\n" not in str(error.value)
