"""Fusing ranked lists: reciprocal rank fusion, and a convex combination of normalised scores.

Plain functions over arrays, like faiss's ``contrib`` helpers. A ranked list is ``ids [n, m]`` (int64, one row per
query, best first, padded at the end with ``-1``) and, where scores count, its ``scores [n, m]`` (higher is
better). Each function returns ``(scores [n, k] float32, ids [n, k] int64)``, best first, padded with ``-inf``
and ``-1`` where the lists hold fewer than ``k`` distinct documents; equal fused scores rank the smaller id first.

- :func:`reciprocal_rank_fusion` (Cormack, Clarke & Buettcher, SIGIR 2009): a document scores
  ``sum over lists of 1 / (rrf_k + rank)``, its rank in each list counted from 1, with ``rrf_k = 60`` as in the
  paper; a list that did not return it adds nothing. Ranks alone count, so lists of any score scale fuse.
- :func:`convex_fusion` (Bruch, Gai & Ingber, "An Analysis of Fusion Functions for Hybrid Retrieval", ACM TOIS
  2023): a document scores ``sum over lists of weight * normalised score``; each list is normalised per query over
  the documents it returned (:func:`normalize_scores`), and a document that a list did not return takes that
  list's floor: its true score there is at most the lowest returned one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embedkit.errors import ConfigError

RRF_K = 60.0
"""Cormack et al.'s constant: it damps the weight of the very top ranks, so no single list dominates."""
NORMALIZATIONS = ("minmax", "zscore")


def normalize_scores(scores: np.ndarray, ids: np.ndarray, method: str = "minmax") -> tuple[np.ndarray, np.ndarray]:
    """Per-query normalised scores of one ranked list, over its returned documents (``ids >= 0``).

    - ``"minmax"``: ``(s - min) / (max - min)``, in ``[0, 1]``; a query whose returned scores are all equal gives
      each 1 (each is the best of its list). Floor: 0.
    - ``"zscore"``: ``(s - mean) / std`` (population std); 0 for each when ``std`` is 0. Floor: the lowest
      returned z-score of the query.

    Args:
        scores: ``[n, m]`` scores, higher is better.
        ids: ``[n, m]`` int64 ids; ``-1`` marks empty slots, whose scores are ignored.
        method: ``"minmax"`` or ``"zscore"``.

    Returns:
        ``(normalised [n, m] float64, 0 in empty slots; floors [n] float64)``: the floor is the score that a
        document this list did not return takes in :func:`convex_fusion` (0 for a query with no results).
    """
    if method not in NORMALIZATIONS:
        raise ConfigError(f"unknown score normalisation {method!r}; valid: {', '.join(NORMALIZATIONS)}")
    valid = np.asarray(ids) >= 0
    values = np.where(valid, np.asarray(scores, dtype=np.float64), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):  # a query without results is a row of NaN
        if method == "minmax":
            low = np.fmin.reduce(values, axis=1, keepdims=True, initial=np.inf)
            span = np.fmax.reduce(values, axis=1, keepdims=True, initial=-np.inf) - low
            normalised = np.where(span > 0, (values - low) / span, 1.0)
            floors = np.zeros(len(values))
        else:
            count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
            deviation = values - np.nansum(values, axis=1, keepdims=True) / count
            std = np.sqrt(np.nansum(deviation**2, axis=1, keepdims=True) / count)
            normalised = np.where(std > 0, deviation / std, 0.0)
            floors = np.fmin.reduce(np.where(valid, normalised, np.nan), axis=1, initial=np.inf)
            floors = np.where(valid.any(axis=1), floors, 0.0)
    return np.where(valid, normalised, 0.0), floors


def reciprocal_rank_fusion(
    ids: Sequence[np.ndarray], k: int, *, rrf_k: float = RRF_K
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ranked lists by reciprocal rank (Cormack et al., 2009): ``score(d) = sum 1 / (rrf_k + rank(d))``.

    Args:
        ids: one ``[n, m_i]`` int64 array per list, best first, ``-1`` padding at the end of a row.
        k: documents to return per query.
        rrf_k: the constant added to each rank (60 in the paper).

    Returns:
        ``(scores [n, k] float32, ids [n, k] int64)``, best first (see the module docs for padding and ties).
    """
    if rrf_k <= 0:
        raise ConfigError(f"rrf_k must be positive, got {rrf_k}")
    lists = _check_lists(ids, None, k)
    contributions = [np.broadcast_to(1.0 / (rrf_k + np.arange(1, a.shape[1] + 1)), a.shape) for a in lists]
    floors = [np.zeros(a.shape[0]) for a in lists]
    return _weighted_sum(lists, contributions, floors, [1.0] * len(lists), k)


def convex_fusion(
    scores: Sequence[np.ndarray],
    ids: Sequence[np.ndarray],
    weights: Sequence[float],
    k: int,
    *,
    normalization: str = "minmax",
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ranked lists by a weighted sum of their normalised scores (Bruch et al., 2023).

    ``score(d) = sum_i weights[i] * norm_i(d)``, where ``norm_i`` is list ``i``'s :func:`normalize_scores` and a
    document that list ``i`` did not return takes its floor. For a dense and a lexical list, ``weights = (alpha,
    1 - alpha)`` is the paper's convex combination.

    Args:
        scores: one ``[n, m_i]`` array per list, higher is better.
        ids: the matching ``[n, m_i]`` int64 arrays, best first, ``-1`` padding.
        weights: one non-negative weight per list.
        k: documents to return per query.
        normalization: ``"minmax"`` or ``"zscore"``.

    Returns:
        ``(scores [n, k] float32, ids [n, k] int64)``, best first (see the module docs for padding and ties).
    """
    lists = _check_lists(ids, scores, k)
    if len(weights) != len(lists) or any(w < 0 for w in weights):
        raise ConfigError(f"convex fusion needs one non-negative weight per list, got {list(weights)}")
    normalised = [normalize_scores(s, i, normalization) for s, i in zip(scores, lists, strict=True)]
    return _weighted_sum(lists, [n for n, _ in normalised], [f for _, f in normalised], list(weights), k)


def _check_lists(
    ids: Sequence[np.ndarray], scores: Sequence[np.ndarray] | None, k: int
) -> list[np.ndarray]:
    """The id arrays as int64, after checking that there is at least one, that they agree on the number of queries
    and match their scores' shapes, and that ``k`` is a positive integer."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    lists = [np.asarray(a, dtype=np.int64) for a in ids]
    if not lists or any(a.ndim != 2 or a.shape[0] != lists[0].shape[0] for a in lists):
        raise ConfigError(f"fusion needs ranked lists of shape [n, m] with one row per query, got "
                          f"{[list(np.shape(a)) for a in ids]}")
    if scores is not None and (
        len(scores) != len(lists) or any(np.shape(s) != a.shape for s, a in zip(scores, lists, strict=False))
    ):
        raise ConfigError(f"each ranked list needs scores of its ids' shape, got scores "
                          f"{[list(np.shape(s)) for s in scores]} for ids {[list(a.shape) for a in lists]}")
    return lists


def _weighted_sum(
    ids: list[np.ndarray], values: list[np.ndarray], floors: list[np.ndarray], weights: list[float], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``sum_i weights[i] * (values[i] of d, or floors[i] where list i lacks d)`` over the union of each row's
    documents; the best ``k``, ties to the smaller id."""
    rows = ids[0].shape[0]
    fused_scores = np.full((rows, k), -np.inf, dtype=np.float32)
    fused_ids = np.full((rows, k), -1, dtype=np.int64)
    for row in range(rows):
        found = [a[row] >= 0 for a in ids]
        union = np.unique(np.concatenate([a[row][f] for a, f in zip(ids, found, strict=True)]))  # ascending
        total = np.zeros(len(union))
        for a, value, floor, weight, f in zip(ids, values, floors, weights, found, strict=True):
            contribution = np.full(len(union), floor[row])
            contribution[np.searchsorted(union, a[row][f])] = value[row][f]
            total += weight * contribution
        order = np.argsort(-total, kind="stable")[:k]  # stable over ascending ids: ties to the smaller id
        fused_scores[row, : len(order)] = total[order]
        fused_ids[row, : len(order)] = union[order]
    return fused_scores, fused_ids
