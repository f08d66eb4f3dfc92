"""Run files: the ranked results of a set of queries, in the formats retrieval tools exchange.

- TREC (what trec_eval, ranx and pyserini read and write): one line per retrieved document,
  ``query_id Q0 doc_id rank score run_name``, whitespace-separated;
- JSONL (embedkit's own): one line per query, ``{"query_id": ..., "ids": [...], "scores": [...]}``.

:func:`read_run` reads either (it tells them apart by the first line); :func:`score_run` scores a run against
qrels with the same trec_eval measures as :class:`~embedkit.eval.retrieval.RetrievalEvaluator`, so a run scored
from its file equals the evaluation that produced it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from embedkit.data.beir import is_beir_folder, read_beir
from embedkit.data.io import read_rows
from embedkit.errors import DataError
from embedkit.eval.retrieval import retrieval_metrics

RUN_FORMATS = ("jsonl", "trec")
Run = dict[str, dict[str, float]]
"""``{query_id: {doc_id: score}}``."""


def trec_lines(query_id: str, ids: Sequence[str], scores: Sequence[float], name: str) -> list[str]:
    """The TREC run lines of one query's results, best first (rank 1 first)."""
    return [f"{query_id} Q0 {doc} {rank} {score:.6f} {name}" for rank, (doc, score) in
            enumerate(zip(ids, scores, strict=True), start=1)]


def jsonl_line(query_id: str, ids: Sequence[str], scores: Sequence[float]) -> str:
    """The JSONL run line of one query's results."""
    return json.dumps({"query_id": query_id, "ids": list(ids), "scores": list(scores)}, ensure_ascii=False)


def read_run(path: str | os.PathLike[str]) -> Run:
    """Read a TREC or JSONL run file.

    Raises:
        DataError: a malformed line (the message names file and line), or an empty file.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read the run: {error}", str(path)) from None
    content = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not content:
        raise DataError("the run file is empty", str(path))
    if content[0][1].lstrip().startswith("{"):
        return _read_jsonl_run(path, content)
    return _read_trec_run(path, content)


def _read_trec_run(path: Path, lines: list[tuple[int, str]]) -> Run:
    run: Run = {}
    for number, line in lines:
        fields = line.split()
        if len(fields) != 6:
            raise DataError(f"a TREC run line has 6 fields (query Q0 doc rank score run), got {len(fields)}",
                            str(path), number)
        query, _, doc, _, score, _ = fields
        try:
            run.setdefault(query, {})[doc] = float(score)
        except ValueError:
            raise DataError(f"score {score!r} is not a number", str(path), number) from None
    return run


def _read_jsonl_run(path: Path, lines: list[tuple[int, str]]) -> Run:
    run: Run = {}
    for number, line in lines:
        try:
            row = json.loads(line)
            query, ids, scores = str(row["query_id"]), row["ids"], row["scores"]
            if len(ids) != len(scores):
                raise ValueError(f"{len(ids)} ids but {len(scores)} scores")
            run[query] = {str(doc): float(score) for doc, score in zip(ids, scores, strict=True)}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise DataError(f"not a run line {{query_id, ids, scores}}: {error}", str(path), number) from None
    return run


def read_qrels(path: str | os.PathLike[str], split: str = "test") -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: relevance}}`` of a qrels TSV (``query-id corpus-id score``) or a BEIR folder's split."""
    if is_beir_folder(path):
        return read_beir(path, split).qrels
    qrels: dict[str, dict[str, int]] = {}
    for line, row in read_rows(path, format="tsv"):
        try:
            qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
        except (KeyError, ValueError):
            raise DataError("a qrels row needs query-id, corpus-id and an integer score", str(path), line) from None
    return qrels


def score_run(run: Run, qrels: dict[str, dict[str, int]], k: int = 100, gain: str = "linear") -> dict[str, float]:
    """trec_eval metrics (x100) of ``run`` over the queries ``qrels`` judge; a judged query the run lacks scores 0.

    Each query's results are cut to its top ``k`` by score, as a search with ``k`` results would return.
    """
    judged = {query: docs for query, docs in run.items() if query in qrels}
    for query in qrels:
        judged.setdefault(query, {})
    cut = {query: dict(sorted(docs.items(), key=lambda item: item[1], reverse=True)[:k])
           for query, docs in judged.items()}
    recall_at = tuple(n for n in (1, 10, 100) if n <= k)
    return retrieval_metrics(cut, qrels, recall_at=recall_at, map_at=k, gain=gain)
