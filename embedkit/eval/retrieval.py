"""Retrieval evaluation on BEIR-layout folders, searched through the project's index, scored by trec_eval.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
``qrels/<split>.tsv`` (header ``query-id corpus-id score``). A document is embedded as ``title + " " + text``;
the queries evaluated are those the split's qrels name, as in BEIR and MTEB.

Metrics (x100, as every embedkit score) come from ``pytrec_eval``, the trec_eval binding that BEIR and MTEB use:
``ndcg@10``, ``mrr@10``, ``recall@k`` and ``map@<k>`` (MAP over the ``k`` retrieved documents).

Graded judgements: ``gain="exponential"`` (the default) scores a document of relevance ``r`` with the gain
``2^r - 1`` (Burges et al., 2005), the convention of the DESIGN.md reference number; ``gain="linear"`` uses ``r``
itself, trec_eval's own convention and so MTEB's. On binary qrels (most BEIR sets) the two are identical; only
nDCG depends on the choice, since every document with ``r >= 1`` counts as relevant for the other metrics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytrec_eval

from embedkit.data import read_rows
from embedkit.data.io import Row
from embedkit.errors import ConfigError, DataError
from embedkit.types import TextEncoder

GAINS = ("exponential", "linear")
NDCG_AT = 10
MRR_AT = 10


class UnknownIdError(DataError):
    """A qrels row names a query or document id that the folder's queries or corpus do not have."""


class EmptyQuerySetError(DataError):
    """There is no query to evaluate: no queries at all, or qrels that judge none of them."""


@dataclass(frozen=True)
class BeirData:
    """A BEIR split, read and checked.

    Attributes:
        doc_ids: ``n`` document ids in corpus order.
        titles: ``n`` document titles (``""`` where a document has none).
        texts: ``n`` document texts.
        query_ids: ids of the queries the split judges, in ``queries.jsonl`` order.
        queries: their texts.
        qrels: ``{query_id: {doc_id: relevance}}`` of the split.
    """

    doc_ids: list[str]
    titles: list[str]
    texts: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]

    @property
    def documents(self) -> list[str]:
        """What is embedded for each document: ``title + " " + text``, or the text alone when there is no title."""
        return [f"{title} {text}" if title else text for title, text in zip(self.titles, self.texts, strict=True)]


def _string(row: Row, column: str, path: Path, line: int, *, missing_ok: bool = False, empty_ok: bool = False) -> str:
    """A string cell; numeric ids, as some BEIR exports write them, become strings."""
    value = row.get(column)
    if value is None and missing_ok:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not (empty_ok or value.strip()):
        need = "a string" if empty_ok else "a non-empty string"
        raise DataError(f"column {column!r} is missing or not {need}", str(path), line)
    return value


def _read_id_texts(path: Path, corpus: bool) -> tuple[list[str], list[str], list[str]]:
    """Ids, titles (corpus only, else empty) and texts of ``corpus.jsonl`` or ``queries.jsonl``."""
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    first_line: dict[str, int] = {}
    for line, row in read_rows(path, format="jsonl"):
        item = _string(row, "_id", path, line)
        if item in first_line:
            raise DataError(f"duplicate _id {item!r} (first on line {first_line[item]})", str(path), line)
        first_line[item] = line
        ids.append(item)
        titles.append(_string(row, "title", path, line, missing_ok=True, empty_ok=True) if corpus else "")
        # BEIR corpora hold a few empty documents (Cranfield has two); they stay, as in BEIR and MTEB
        texts.append(_string(row, "text", path, line, empty_ok=corpus))
    return ids, titles, texts


def read_beir(folder: str | os.PathLike[str], split: str = "test") -> BeirData:
    """Read and check a BEIR folder's corpus, queries and ``split`` qrels.

    Raises:
        DataError: a missing file or malformed row (the message names file and line), an empty corpus.
        UnknownIdError: a qrels row names an id that is not in ``queries.jsonl`` or ``corpus.jsonl``.
        EmptyQuerySetError: no queries, or a qrels file that judges none.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)", str(folder))
    qrels_file = folder / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise DataError(f"no qrels for split {split!r}; splits here: {', '.join(splits) or 'none'}", str(qrels_file))
    doc_ids, titles, texts = _read_id_texts(folder / "corpus.jsonl", corpus=True)
    if not doc_ids:
        raise DataError("the corpus has no documents", str(folder / "corpus.jsonl"))
    query_file = folder / "queries.jsonl"
    all_query_ids, _, all_queries = _read_id_texts(query_file, corpus=False)
    if not all_query_ids:
        raise EmptyQuerySetError("no queries", str(query_file))

    known_queries, known_docs = set(all_query_ids), set(doc_ids)
    qrels: dict[str, dict[str, int]] = {}
    for line, row in read_rows(qrels_file, format="tsv"):
        query_id = _string(row, "query-id", qrels_file, line)
        doc_id = _string(row, "corpus-id", qrels_file, line)
        if query_id not in known_queries:
            raise UnknownIdError(f"query id {query_id!r} is not in {query_file.name}", str(qrels_file), line)
        if doc_id not in known_docs:
            raise UnknownIdError(f"corpus id {doc_id!r} is not in corpus.jsonl", str(qrels_file), line)
        try:
            relevance = int(row.get("score", ""))
        except ValueError:
            raise DataError(f"score {row.get('score')!r} is not an integer", str(qrels_file), line) from None
        qrels.setdefault(query_id, {})[doc_id] = relevance
    judged = [i for i, query_id in enumerate(all_query_ids) if query_id in qrels]
    if not judged:
        raise EmptyQuerySetError(f"the {split} qrels judge no query", str(qrels_file))
    return BeirData(
        doc_ids=doc_ids,
        titles=titles,
        texts=texts,
        query_ids=[all_query_ids[i] for i in judged],
        queries=[all_queries[i] for i in judged],
        qrels=qrels,
    )


def retrieval_metrics(
    run: dict[str, dict[str, float]],
    qrels: dict[str, dict[str, int]],
    recall_at: tuple[int, ...] = (1, 10, 100),
    map_at: int = 100,
    gain: str = "exponential",
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
        index_spec: ``"torch"``, ``"faiss:Flat"``, ``"faiss:HNSW32"``, ... (see :mod:`embedkit.index`).
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
    gain: str = "exponential"
    batch_size: int = 64
    primary_metric: str = field(default=f"ndcg@{NDCG_AT}", init=False)

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
        from embedkit.index import build_index  # the index pulls in faiss; import it only when searching

        data = self.data
        index = build_index(encoder, data.documents, spec=self.index_spec, metric="cosine", batch_size=self.batch_size)
        found = index.search(data.queries, k=min(self.k, len(data.doc_ids)), batch_size=self.batch_size)
        run: dict[str, dict[str, float]] = {}
        for query_id, ids, scores in zip(data.query_ids, found.ids, found.scores, strict=True):
            # an index may pad a short result list with id -1
            run[query_id] = {data.doc_ids[i]: float(s) for i, s in zip(ids, scores, strict=True) if i >= 0}
        return run

    def __call__(self, encoder: TextEncoder) -> dict[str, float]:
        return retrieval_metrics(self.search(encoder), self.data.qrels, self.recall_at, self.k, self.gain)
