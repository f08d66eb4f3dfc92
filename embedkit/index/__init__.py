"""Indexes: embed a corpus, search it, keep it on disk (DESIGN.md, principle 4).

::

    from embedkit.index import build_index, Index
    index = build_index(encoder, "corpus.jsonl", spec="faiss:HNSW32", metric="cosine")
    scores, ids = index.search(["how do boundary layers behave"], k=10)
    index.save("idx/")
    index = Index.load("idx/")
    with Index.update("idx/") as index:  # holds the writers' lock from load to save
        index.add(["more text"])

Backends are found by name in :data:`BACKENDS`: ``torch`` (exact, chunked; ``torch:cuda`` on a GPU),
``faiss`` (``faiss:<factory string>``; on the GPU when faiss sees one; binary codes as ``faiss:BFlat``, and
rescoring from vectors kept on disk as ``faiss:BFlat,rescore=4``: :mod:`embedkit.index.quantized`), ``bm25``
(lexical, with bm25s; no encoder) and ``hybrid`` (``hybrid:faiss:Flat``: a dense index and BM25, fused).
:func:`exact_search` is the exact search as a plain function over arrays, returning ``(scores, indices)`` like
``faiss.knn``; :func:`reciprocal_rank_fusion` and :func:`convex_fusion` fuse ranked lists the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedkit.lazy import lazy_exports

if TYPE_CHECKING:
    from embedkit.encoders.fingerprint import model_fingerprint
    from embedkit.index.corpus import Corpus, Document, as_corpus
    from embedkit.index.exact import exact_search
    from embedkit.index.fusion import convex_fusion, reciprocal_rank_fusion
    from embedkit.index.index import Index, SearchResult, build_index
    from embedkit.index.spec import (
        BACKENDS,
        METRICS,
        IndexConflictError,
        IndexFileError,
        IndexMismatchError,
        IndexSpec,
        IndexWarning,
        parse_spec,
    )

# Imported on first use: `embedkit index --help` reads embedkit.index.spec without loading torch or faiss.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("Corpus", "Document", "as_corpus"), "embedkit.index.corpus"),
        "exact_search": "embedkit.index.exact",
        **dict.fromkeys(("convex_fusion", "reciprocal_rank_fusion"), "embedkit.index.fusion"),
        **dict.fromkeys(("Index", "SearchResult", "build_index"), "embedkit.index.index"),
        **dict.fromkeys(
            (
                "BACKENDS",
                "METRICS",
                "IndexConflictError",
                "IndexFileError",
                "IndexMismatchError",
                "IndexSpec",
                "IndexWarning",
                "parse_spec",
            ),
            "embedkit.index.spec",
        ),
        "model_fingerprint": "embedkit.encoders.fingerprint",
    },
)

__all__ = [
    "BACKENDS",
    "METRICS",
    "Corpus",
    "Document",
    "Index",
    "IndexConflictError",
    "IndexFileError",
    "IndexMismatchError",
    "IndexSpec",
    "IndexWarning",
    "SearchResult",
    "as_corpus",
    "build_index",
    "convex_fusion",
    "exact_search",
    "model_fingerprint",
    "parse_spec",
    "reciprocal_rank_fusion",
]
