"""Encoding a corpus and building one index with all the processes of a ``torchrun`` job.

Each rank embeds a contiguous shard of the corpus, the costly part. An index that needs training (IVF, PQ) is
trained once, on rank 0, on the seeded sample :func:`~embedkit.index.build_index` would use (each rank sends the
sample vectors of its shard), and the trained, still empty index goes to every rank. Each rank then adds its
shard to its copy, with the shard's corpus positions as ids, and rank 0 merges the shards in rank order with
faiss's ``merge_from``, so the inverted lists hold the vectors in corpus order as in one process. Indexes that
cannot be merged (HNSW graphs, exact ``torch`` search, binary codes, rescoring) receive the gathered vectors on
rank 0 instead, and are trained there when they need it (binary IVF, int8 rescoring vectors). Payloads
(ids, texts, metadata) are stored on rank 0, which is the only rank that returns the index. The search parameter
is tuned on rank 0 with the tuning queries one process would draw, held out of every shard; each rank finds their
exact neighbours in its shard.

In one process both functions are their plain counterparts (:meth:`Encoder.encode`, :func:`build_index`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np

from embedkit import distributed
from embedkit.index.corpus import CorpusSource, as_corpus
from embedkit.index.faiss_backend import FaissBackend
from embedkit.index.index import CHUNK_SIZE, Index, build_index, document_prompt, empty_index, training_positions
from embedkit.index.spec import DEFAULT_TARGET_RECALL, IndexSpec, needs_encoder
from embedkit.index.store import check_ids
from embedkit.index.tuning import (
    RECALL_AT,
    HeldOutQueries,
    check_target_recall,
    query_count,
    tuned_parameter,
)
from embedkit.types import TextEncoder


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``(start, end)`` of ``rank``'s contiguous shard of ``n`` items; shard sizes differ by at most one."""
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


def _shard_embeddings(
    encoder: TextEncoder,
    texts: Sequence[str],
    batch_size: int,
    normalize: bool,
    show_progress: bool | None,
    prompt: str | None,
) -> np.ndarray:
    """``[end - start, D]`` embeddings of this rank's shard ``texts[start:end]`` after ``prompt``; rank 0 shows its
    progress (the other ranks go at the same pace)."""
    start, end = shard_bounds(len(texts), distributed.rank(), distributed.world_size())
    return encoder.encode(
        list(texts[start:end]),
        batch_size=batch_size,
        normalize=normalize,
        show_progress=show_progress if distributed.is_main_process() else False,
        prompt=prompt,
    )


def encode_sharded(
    encoder: TextEncoder,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    normalize: bool = False,
    show_progress: bool | None = None,
    prompt: str | None = None,
) -> np.ndarray | None:
    """Embed ``texts`` (each after ``prompt``; ``None``: the model's default prompt) with every process of the job:
    ``[n, D]`` float32 in input order on rank 0, ``None`` on the others. Each rank embeds a contiguous shard; every
    rank must pass the same texts."""
    shards = distributed.gather_to_main(
        _shard_embeddings(encoder, texts, batch_size, normalize, show_progress, prompt)
    )
    return None if shards is None else np.concatenate(shards)


def build_index_sharded(
    encoder: TextEncoder | None,
    corpus: CorpusSource,
    spec: str | IndexSpec = "torch",
    metric: str = "cosine",
    *,
    batch_size: int = 64,
    chunk_size: int = CHUNK_SIZE,
    device: str = "auto",
    seed: int = 0,
    show_progress: bool | None = None,
    target_recall: float | None = DEFAULT_TARGET_RECALL,
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> Index | None:
    """:func:`~embedkit.index.build_index` across the processes of a ``torchrun`` job (see the module doc).

    Every rank must call it with the same arguments; each reads the corpus (cheap next to embedding it). Returns
    the index on rank 0 and ``None`` on the other ranks. The arguments are :func:`build_index`'s; ``chunk_size``
    is the number of payloads stored at a time on rank 0 (the vectors of a rank's shard are held in memory).

    Raises:
        DataError: a bad id or row (on every rank alike, before anything is embedded).
        ConfigError: too few documents to train the index.
    """
    if not distributed.is_distributed() or not needs_encoder(spec):
        # an index that embeds nothing has nothing to share out: rank 0 builds it alone
        if not distributed.is_main_process():
            return None
        return build_index(
            encoder,
            corpus,
            spec,
            metric,
            batch_size=batch_size,
            chunk_size=chunk_size,
            device=device,
            seed=seed,
            show_progress=show_progress,
            target_recall=target_recall,
            prompt_name=prompt_name,
            prompt=prompt,
        )
    target = check_target_recall(target_recall)
    before_documents = document_prompt(encoder, spec, prompt_name, prompt)
    index = empty_index(encoder, spec, metric, device, before_documents)
    documents = as_corpus(corpus)
    rows = list(documents)
    id_type = check_ids([d.id for d in rows], None, documents.name)
    start, end = shard_bounds(len(rows), distributed.rank(), distributed.world_size())
    texts = [d.text for d in rows]
    vectors = _shard_embeddings(encoder, texts, batch_size, index.manifest.normalize, show_progress, before_documents)
    backend = index.backend
    tune = target is not None and query_count(len(rows)) > 0 and tuned_parameter(backend) is not None
    if isinstance(backend, FaissBackend) and backend.needs_training:  # trained before the shards are added
        _train_on_main(backend, len(rows), vectors, start, seed)
    shard_ids = np.arange(start, end, dtype=np.int64)
    queries = _held_out_queries(len(rows), vectors, start, seed, backend.metric) if tune else None
    kept, kept_ids = (vectors, shard_ids) if queries is None else queries.withhold(start, vectors, shard_ids)
    if isinstance(backend, FaissBackend) and backend.mergeable:
        backend.add(kept, kept_ids)
        shards = distributed.gather_to_main(backend.to_bytes())
        if shards is not None:
            # every shard goes through the same serialisation: faiss merges only indexes of the very same class
            backend.load_bytes(shards[0])
            for shard in shards[1:]:
                backend.merge(shard)
    else:
        parts = distributed.gather_to_main((kept, kept_ids))
        if parts is not None:
            gathered, ids = np.concatenate([v for v, _ in parts]), np.concatenate([i for _, i in parts])
            if backend.needs_training:  # binary IVF, int8 rescoring vectors: on the sample one process would draw
                sample = training_positions(len(rows), backend.training_size(len(rows)), seed)
                backend.train(gathered[np.isin(ids, sample)])  # ids are corpus positions
            backend.add(gathered, ids)
    if queries is not None:
        queries = _merged_on_main(queries)
    if not distributed.is_main_process():
        return None
    with index.store.transaction():
        for chunk_start in range(0, len(rows), chunk_size):
            index._insert_payloads(rows[chunk_start : chunk_start + chunk_size])
    index.index_texts()
    index.manifest.count = len(backend)
    index.manifest.id_type = id_type
    if queries is not None and target is not None:
        index._tune(queries, target)
    return index


def _train_on_main(backend: FaissBackend, n: int, vectors: np.ndarray, start: int, seed: int) -> None:
    """Train ``backend`` on rank 0 with the sample a single process would draw, then give every rank the trained
    index. ``vectors`` are this rank's shard, which begins at corpus position ``start``."""
    positions = training_positions(n, backend.training_size(n), seed)
    mine = positions[(positions >= start) & (positions < start + len(vectors))]
    samples = distributed.gather_to_main(vectors[mine - start])
    if samples is not None:
        backend.train(np.concatenate(samples))  # shards are contiguous, so rank order is position order
    trained = distributed.broadcast_object(backend.to_bytes() if samples is not None else None)
    backend.load_bytes(cast(np.ndarray, trained))  # rank 0 sent the bytes of to_bytes()


def _held_out_queries(n: int, vectors: np.ndarray, start: int, seed: int, metric: str) -> HeldOutQueries:
    """The tuning queries a single process would draw, on every rank (each sends those of its shard, ``vectors``
    from corpus position ``start``), to be held out of the shards."""
    positions = training_positions(n, query_count(n), seed)
    mine = positions[(positions >= start) & (positions < start + len(vectors))]
    held = np.concatenate(distributed.gather_objects(vectors[mine - start]))  # rank order is position order
    return HeldOutQueries(positions, held, min(RECALL_AT, n - len(positions)), metric)


def _merged_on_main(queries: HeldOutQueries) -> HeldOutQueries | None:
    """On rank 0, the queries with their exact neighbours among every shard's documents (each rank found those in
    its own shard); ``None`` on the other ranks."""
    results = distributed.gather_to_main(queries.truth.result())
    if results is None:
        return None
    merged = HeldOutQueries(queries.positions, queries.vectors, queries.truth.k, queries.truth.metric)
    for scores, ids in results:
        merged.truth.add_result(scores, ids)
    merged.ids[:] = queries.positions  # a sharded build stores each document under its corpus position
    return merged
