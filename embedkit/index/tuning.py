"""Choosing an approximate index's search parameter at build time, for a target recall against exact search.

faiss searches an IVF index with ``nprobe=1`` and an HNSW graph with ``efSearch=16`` unless told otherwise; on
Cranfield's all-MiniLM-L6-v2 embeddings ``IVF32,Flat`` then finds 64% of exact search's top 10 (96% with the
``nprobe=8`` chosen here). So
:func:`~embedkit.index.build_index` measures instead of trusting the defaults. A seeded tenth of the corpus (at
most 1,000 documents) serves as queries and is held out of the index until the tuning is done (see
:class:`HeldOutQueries` for why); their exact top 10 among the other documents is the ground truth
(:func:`~embedkit.index.exact_search`, chunk by chunk as the corpus is added, merged with faiss's
``ResultHeap``). The values that faiss's ``ParameterSpace`` lists for the index (``nprobe`` 1, 2, 4, ... for IVF
indexes, also behind PQ, SQ or a transform; ``efSearch`` 16 ... 512 for HNSW) are tried from the smallest up, and
the first whose recall@10 reaches the target is kept, being the fastest that does. When none does, a warning
says so and the value with the best recall is kept.
"""

from __future__ import annotations

import numbers
import warnings
from typing import TypedDict

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure

from embedkit.errors import ConfigError
from embedkit.index.faiss_backend import FaissBackend
from embedkit.index.spec import Backend, IndexWarning

RECALL_AT = 10
TUNING_QUERIES = 1000
"""Corpus vectors used as queries: recall over 10,000 neighbours has a standard error under 0.003 near 0.95."""


class SearchTuning(TypedDict):
    """What the manifest records of a tuning (``search_tuning``), and ``embedkit index info`` shows.

    ``tried`` holds ``[value, recall]`` for every value searched with, smallest first.
    """

    parameter: str
    value: int
    recall: float
    target_recall: float
    reached: bool
    k: int
    queries: int
    documents: int
    tried: list[list[float]]


def check_target_recall(target: object) -> float | None:
    """``target`` as a float in ``(0, 1]``; ``None`` (tuning off) as is.

    Raises:
        ConfigError: anything else, in one line.
    """
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0 < float(target) <= 1:
        raise ConfigError(
            f"the target recall must be a number in (0, 1] (recall@{RECALL_AT} against exact search), or off to "
            f"keep faiss's default search parameters; got {target!r}"
        )
    return float(target)


def tuned_parameter(backend: Backend) -> tuple[str, list[int]] | None:
    """``(name, values to try, smallest first)`` of the parameter to tune, or ``None`` when the index has none
    (exact search, ``Flat``, ``PQ``) or is not tuned (binary indexes and ``rescore=`` specs keep faiss's
    defaults). The values are those of faiss's ``ParameterSpace``: ``nprobe`` for IVF indexes (an IVF index over an
    HNSW quantizer too), with the number of lists itself added, which faiss leaves out and which makes an IVF-Flat
    search exact; else ``efSearch`` for HNSW graphs, from 16."""
    if not isinstance(backend, FaissBackend):
        return None
    index = backend.index
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):  # ParameterSpace does not look inside id maps
        index = faiss.downcast_index(index.index)
    space = faiss.ParameterSpace()
    space.initialize(index)
    ranges = {}
    for position in range(space.parameter_ranges.size()):
        parameter = space.parameter_ranges.at(position)  # bound to a name: `.values` of a temporary dangles
        ranges[parameter.name] = [int(value) for value in faiss.vector_to_array(parameter.values)]
    ivf = faiss.try_extract_index_ivf(backend.index)
    if "nprobe" in ranges and ivf is not None:
        return "nprobe", [*ranges["nprobe"], *([int(ivf.nlist)] if int(ivf.nlist) not in ranges["nprobe"] else [])]
    if "efSearch" in ranges:
        # faiss's HNSW returns fewer than k results when efSearch < k, and the graph is searched for k >= 10
        return "efSearch", [value for value in ranges["efSearch"] if value >= RECALL_AT]
    return None


def query_count(n: int) -> int:
    """How many of ``n`` documents serve as tuning queries: a tenth, at most :data:`TUNING_QUERIES` (0: too few
    documents to tune on)."""
    return min(TUNING_QUERIES, n // 10)


class GroundTruth:
    """The exact ``k`` nearest neighbours of a few queries over a corpus that arrives in pieces.

    Args:
        queries: ``[q, D]`` float32 query vectors (normalised already when the metric is cosine).
        k: neighbours per query.
        metric: ``"ip"`` or ``"l2"``, the backend's metric.
    """

    def __init__(self, queries: np.ndarray, k: int, metric: str) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self.metric = metric
        self._heap = faiss.ResultHeap(len(queries), k, keep_max=metric != "l2")
        self._finalized = False

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Take ``[n, D]`` corpus vectors stored under ``[n]`` int64 ids into account."""
        from embedkit.index.exact import exact_search  # torch: imported here, so that `index info` loads none

        if len(vectors) == 0:
            return
        scores, positions = exact_search(self.queries, vectors, min(self.k, len(vectors)), metric=self.metric)
        self.add_result(scores, np.asarray(ids, dtype=np.int64)[positions])

    def add_result(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """Merge ``[q, m]`` exact results over another part of the corpus (another process's shard)."""
        self._heap.add_result(scores, ids)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [q, k] float32, ids [q, k] int64)`` of the exact neighbours, best first (id ``-1`` past the
        corpus size); nothing can be added after."""
        if not self._finalized:
            self._heap.finalize()  # sorts the heaps in place, once
            self._finalized = True
        return self._heap.D, self._heap.I


class HeldOutQueries:
    """Corpus vectors kept out of the index while it is tuned, and their exact neighbours among the rest.

    Queries that the index holds find themselves, and an HNSW graph leads from a query's own node to its
    neighbours: on clustered data, such queries measured recall@10 0.94 at ``efSearch=16`` where queries from
    outside the corpus got 0.75, and the same queries held out 0.76. So the queries are added last, after tuning.

    Args:
        positions: ``[q]`` sorted corpus positions of the queries.
        vectors: ``[q, D]`` their vectors, as the index stores them.
        k: neighbours per query.
        metric: ``"ip"`` or ``"l2"``, the backend's metric.
    """

    def __init__(self, positions: np.ndarray, vectors: np.ndarray, k: int, metric: str) -> None:
        self.positions = np.asarray(positions, dtype=np.int64)
        self.truth = GroundTruth(vectors, k, metric)
        self.ids = np.full(len(positions), -1, dtype=np.int64)

    @property
    def vectors(self) -> np.ndarray:
        return self.truth.queries

    def withhold(self, start: int, vectors: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``[m, D]`` vectors and ``[m]`` ids of a chunk (corpus positions ``start...``) to add now: all but
        the queries, whose ids are kept for :meth:`restore`, and which get the rest as candidate neighbours."""
        held = np.isin(np.arange(start, start + len(vectors)), self.positions)
        self.ids[np.searchsorted(self.positions, np.flatnonzero(held) + start)] = ids[held]
        self.truth.add(vectors[~held], ids[~held])
        return vectors[~held], ids[~held]

    def restore(self, backend: Backend) -> None:
        """Add the held-out queries to the index, under the ids :meth:`withhold` saw."""
        backend.add(self.vectors, self.ids)


def tune_search(backend: FaissBackend, queries: HeldOutQueries, target: float, documents: int) -> SearchTuning:
    """Measure recall@k of the held-out ``queries`` for the values of the backend's search parameter, smallest
    first, until one reaches ``target``; returns that value (to set) and what was measured.

    Searches the CPU index, where each value is set at no cost (a GPU copy would be made again for each); faiss's
    GPU indexes search the same lists and graphs. The index is left with the last value tried.

    Raises:
        ConfigError: the index has no parameter to tune (see :func:`tuned_parameter`).

    Warns:
        IndexWarning: no value reaches the target; the one with the best recall (the smallest of equals) is chosen.
    """
    found = tuned_parameter(backend)
    if found is None:
        raise ConfigError(f"faiss:{backend.factory} has no search parameter to tune")
    name, values = found
    truth = queries.truth
    _, expected = truth.result()
    space = faiss.ParameterSpace()
    tried: list[list[float]] = []
    for value in values:
        space.set_index_parameter(backend.index, name, value)
        _, ids = backend.index.search(truth.queries, truth.k)
        tried.append([value, round(float(knn_intersection_measure(ids, expected)), 4)])
        if tried[-1][1] >= target:
            break
    best_value, best_recall = max(tried, key=lambda entry: (entry[1], -entry[0]))
    reached = best_recall >= target
    if not reached:
        warnings.warn(
            f"faiss:{backend.factory} reaches recall@{truth.k} {best_recall:.3f} at best against exact search "
            f"({name}={int(best_value)}; the largest value tried was {values[-1]}), short of the target {target:g}; "
            f"searching with {name}={int(best_value)}. Lower the target, or choose an index that loses less (fewer "
            "IVF lists, finer codes, a larger HNSW M)",
            IndexWarning,
            stacklevel=5,  # the caller of build_index
        )
    return {
        "parameter": name,
        "value": int(best_value),
        "recall": best_recall,
        "target_recall": target,
        "reached": reached,
        "k": truth.k,
        "queries": len(truth.queries),
        "documents": documents,
        "tried": [[int(value), recall] for value, recall in tried],
    }


def tuning_summary(tuning: SearchTuning | None) -> str:
    """One line for ``embedkit index info``: ``nprobe=8: recall@10 0.962 (target 0.95; ...)``."""
    if tuning is None:
        return "none"
    verdict = "" if tuning["reached"] else ", not reached"
    return (
        f"{tuning['parameter']}={tuning['value']}: recall@{tuning['k']} {tuning['recall']:.3f} against exact search "
        f"(target {tuning['target_recall']:g}{verdict}; {tuning['queries']:,} of {tuning['documents']:,} documents "
        "as held-out queries)"
    )
