"""BEIR folders: a corpus, queries and relevance judgements (qrels) per split, read and checked.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
``qrels/<split>.tsv`` (header ``query-id corpus-id score``). Evaluation searches a split's queries
(:mod:`embedkit.eval.retrieval`); training reads a split's judged (query, document) pairs (:func:`beir_pairs`);
:func:`split_queries` cuts one qrels file into train, dev and test splits for users who have only one.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from embedkit.data.io import Row, read_rows
from embedkit.errors import ConfigError, DataError
from embedkit.fsutil import atomic_write_bytes
from embedkit.types import Example

QRELS_HEADER = "query-id\tcorpus-id\tscore"


def is_beir_folder(path: str | os.PathLike[str]) -> bool:
    """True for a folder with ``corpus.jsonl``, ``queries.jsonl`` and a ``qrels`` folder."""
    folder = Path(path)
    return (folder / "corpus.jsonl").is_file() and (folder / "queries.jsonl").is_file() and (folder / "qrels").is_dir()


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


def beir_pairs(folder: str | os.PathLike[str], split: str = "train", min_relevance: int = 1) -> list[Example]:
    """The (query, relevant document) pairs a split judges: one row per qrels line scoring at least
    ``min_relevance``, the document as ``title + " " + text``, in qrels order.

    Raises:
        DataError: as :func:`read_beir`, or no judgement reaches ``min_relevance``.
    """
    data = read_beir(folder, split)
    qrels_file = Path(folder) / "qrels" / f"{split}.tsv"
    queries = dict(zip(data.query_ids, data.queries, strict=True))
    documents = dict(zip(data.doc_ids, data.documents, strict=True))
    pairs = [
        Example(anchor=queries[row["query-id"]], positive=documents[row["corpus-id"]], source=(str(qrels_file), line))
        for line, row in read_rows(qrels_file, format="tsv")
        if int(row["score"]) >= min_relevance and documents[row["corpus-id"]].strip()
    ]
    if not pairs:
        raise DataError(f"no judgement of the {split} split scores {min_relevance} or more", str(qrels_file))
    return pairs


def split_queries(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fractions: dict[str, float],
    seed: int = 0,
    source_split: str = "test",
) -> dict[str, int]:
    """Split the queries that ``source_split`` judges into new splits, by a seeded shuffle, as a BEIR folder.

    ``out`` gets ``qrels/<name>.tsv`` for every name of ``fractions`` (shares of the judged queries, summing to
    1; a query's judgements all go to one split), and the corpus and queries of ``folder`` (hard links where the
    file system allows, else copies; nothing is written when ``out`` is ``folder``).

    Returns:
        ``{split: number of queries}``.

    Raises:
        ConfigError: fractions that are not positive or do not sum to 1, or a split that would get no query;
            ``out`` already holds one of the qrels files.
    """
    if not fractions or any(share <= 0 for share in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise ConfigError(f"split fractions must be positive and sum to 1, got {fractions}")
    data = read_beir(folder, source_split)
    target = Path(out)
    existing = [name for name in fractions if (target / "qrels" / f"{name}.tsv").exists()]
    if existing:
        raise ConfigError(f"{target} already has qrels for {', '.join(existing)}; choose another folder")
    order = list(data.query_ids)
    random.Random(seed).shuffle(order)
    counts = _shares(len(order), list(fractions.values()))
    if 0 in counts:
        raise ConfigError(f"{len(order)} judged queries are too few for the splits {fractions}")
    if target.resolve() != Path(folder).resolve():
        target.mkdir(parents=True, exist_ok=True)
        for name in ("corpus.jsonl", "queries.jsonl"):
            _link_or_copy(Path(folder) / name, target / name)
    start = 0
    for name, count in zip(fractions, counts, strict=True):
        lines = [QRELS_HEADER]
        for query_id in order[start : start + count]:
            lines += [f"{query_id}\t{doc_id}\t{score}" for doc_id, score in data.qrels[query_id].items()]
        atomic_write_bytes(target / "qrels" / f"{name}.tsv", ("\n".join(lines) + "\n").encode("utf-8"))
        start += count
    return dict(zip(fractions, counts, strict=True))


def _shares(total: int, fractions: list[float]) -> list[int]:
    """Whole counts summing to ``total`` in the proportions ``fractions`` (largest remainders first)."""
    exact = [total * share for share in fractions]
    counts = [int(value) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)
