"""Retrieval evaluation on BEIR-layout folders, searched through the project's index, scored by trec_eval.

A BEIR folder (read by :func:`embedkit.data.beir.read_beir`) holds a corpus, queries and qrels per split. A
document is embedded as ``title + " " + text``; the queries evaluated are those the split's qrels name, as in
BEIR and MTEB.

Metrics (x100, as every embedkit score) come from ``pytrec_eval``, the trec_eval binding that BEIR and MTEB use:
``ndcg@10``, ``mrr@10``, ``recall@k`` and ``map@<k>`` (MAP over the ``k`` retrieved documents).

Graded judgements: ``gain="linear"`` (the default) scores a document of relevance ``r`` with the gain ``r``
itself, trec_eval's own convention and so BEIR's and MTEB's; ``gain="exponential"`` uses ``2^r - 1`` (Burges et
al., 2005). On binary qrels (most BEIR sets) the two are identical; only
nDCG depends on the choice, since every document with ``r >= 1`` counts as relevant for the other metrics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pytrec_eval

from embedkit.data.beir import read_beir
from embedkit.errors import ConfigError
from embedkit.eval.scale import SCORE_SCALE
from embedkit.progress import stage
from embedkit.types import TextEncoder

GAINS = ("exponential", "linear")
NDCG_AT = 10
MRR_AT = 10


def retrieval_metrics(
    run: dict[str, dict[str, float]],
    qrels: dict[str, dict[str, int]],
    recall_at: tuple[int, ...] = (1, 10, 100),
    map_at: int = 100,
    gain: str = "linear",
) -> dict[str, float]:
    """trec_eval metrics (x100, mean over the queries of ``run``) of a run ``{query: {doc: score}}``.

    trec_eval ranks each query's documents by score, ties broken by document id, whatever order ``run`` has.
    """
    if gain not in GAINS:
        raise ConfigError(f"unknown gain {gain!r}; valid: {', '.join(GAINS)}")
    judged = qrels if gain == "linear" else {q: {d: 2**r - 1 if r > 0 else 0 for d, r in docs.items()}
                                             for q, docs in qrels.items()}
    measures = {f"ndcg_cut.{NDCG_AT}", "recall." + ",".join(map(str, recall_at)), f"map_cut.{map_at}"}
    per_query = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(run)
    # trec_eval's reciprocal rank has no cutoff: score the run cut to its top MRR_AT in trec_eval's own order
    top = {
        query: dict(sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)[:MRR_AT])
        for query, docs in run.items()
    }
    reciprocal = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top)

    def mean(table: dict[str, dict[str, float]], measure: str) -> float:
        return 100 * float(np.mean([scores[measure] for scores in table.values()]))

    metrics = {
        f"ndcg@{NDCG_AT}": mean(per_query, f"ndcg_cut_{NDCG_AT}"),
        f"mrr@{MRR_AT}": mean(reciprocal, "recip_rank"),
    }
    metrics.update({f"recall@{k}": mean(per_query, f"recall_{k}") for k in recall_at})
    metrics[f"map@{map_at}"] = mean(per_query, f"map_cut_{map_at}")
    return metrics


@dataclass
class RetrievalEvaluator:
    """``evaluator(encoder) -> {"ndcg@10", "mrr@10", "recall@k"..., "map@<k>"}`` on a BEIR folder.

    The corpus is indexed with :func:`embedkit.index.build_index` (any index spec) and each query searched for
    its top ``k`` documents by cosine similarity. The primary metric is ``ndcg@10``.

    Args:
        folder: a BEIR folder.
        split: the qrels split (``qrels/<split>.tsv``).
        index_spec: ``"torch"``, ``"faiss:Flat"``, ``"faiss:HNSW32"``, ``"bm25"`` (the encoder is not used),
            ``"hybrid:faiss:Flat"``, ... (see :mod:`embedkit.index`).
        k: documents retrieved per query; ``map@k`` is computed over them.
        recall_at: the cutoffs of ``recall@k``, each at most ``k``.
        gain: ``"exponential"`` or ``"linear"`` nDCG gains for graded judgements (see the module docs).
        batch_size: encoding batch size.
    """

    folder: str | os.PathLike[str]
    split: str = "test"
    index_spec: str = "torch"
    k: int = 100
    recall_at: tuple[int, ...] = (1, 10, 100)
    gain: str = "linear"
    batch_size: int = 64
    primary_metric: str = field(default=f"ndcg@{NDCG_AT}", init=False)
    higher_is_better: bool = field(default=True, init=False)
    score_scale: ClassVar[int] = SCORE_SCALE

    def __post_init__(self) -> None:
        self.recall_at = tuple(sorted(set(self.recall_at)))
        if self.k < max(NDCG_AT, MRR_AT):
            least = max(NDCG_AT, MRR_AT)
            raise ConfigError(f"k must be at least {least} for nDCG@{NDCG_AT} and MRR@{MRR_AT}, got {self.k}")
        if not self.recall_at or self.recall_at[0] < 1 or self.recall_at[-1] > self.k:
            raise ConfigError(f"recall cutoffs must lie in 1..k={self.k}, got {list(self.recall_at)}")
        if self.gain not in GAINS:
            raise ConfigError(f"unknown gain {self.gain!r}; valid: {', '.join(GAINS)}")
        self.data = read_beir(self.folder, self.split)

    def search(self, encoder: TextEncoder) -> dict[str, dict[str, float]]:
        """The run ``{query_id: {doc_id: score}}`` of the top ``k`` documents of every judged query."""
        from embedkit.index import as_corpus, build_index  # the index pulls in faiss; import it only when searching

        data = self.data
        # a collection is scored as published, with the few empty documents some hold (BEIR's convention)
        documents = as_corpus(data.documents, allow_blank=True)
        with stage("retrieval"):
            index = build_index(encoder, documents, spec=self.index_spec, metric="cosine", batch_size=self.batch_size)
            found = index.search(data.queries, k=min(self.k, len(data.doc_ids)), batch_size=self.batch_size)
        run: dict[str, dict[str, float]] = {}
        for query_id, ids, scores in zip(data.query_ids, found.ids, found.scores, strict=True):
            # an index may pad a short result list with id -1
            run[query_id] = {data.doc_ids[i]: float(s) for i, s in zip(ids, scores, strict=True) if i >= 0}
        return run

    def __call__(self, encoder: TextEncoder) -> dict[str, float]:
        return retrieval_metrics(self.search(encoder), self.data.qrels, self.recall_at, self.k, self.gain)
