"""The :class:`Index`: an encoder's embeddings of a corpus, searchable by text or vector, saved as a folder.

An index ties three things together: a backend holding vectors under int64 internal ids (exact ``torch`` or
any ``faiss`` index), a :class:`~embedkit.index.store.PayloadStore` mapping internal ids to the corpus's own
ids, texts and metadata, and a :class:`~embedkit.index.store.Manifest` naming the model whose embeddings these
are. Searching with an encoder of another model or dimension is refused, since its vectors would live in
another space and every score would be meaningless. An index of a model's embeddings cut to their first
``truncate_dim`` dimensions (Matryoshka) records the cut, and the model it loads for text queries makes the same.

Documents are embedded after the model's document prompt and queries after its query prompt (see
:mod:`embedkit.encoders.prompts`); the manifest records the document prompt, every later addition uses it, and an
encoder whose model declares another document prompt gets a :class:`PromptMismatchWarning`. BM25 reads the texts
without prompts.

On disk an index is a folder of numbered versions behind a pointer (:mod:`embedkit.index.folder`): saves never
leave the path without a complete index, readers never see half of a save, and :meth:`Index.update` holds the
writers' lock from load to save, so that concurrent writers queue rather than lose each other's documents.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from embedkit.data.collate import longest_first, text_id
from embedkit.encoders.fingerprint import model_fingerprint
from embedkit.encoders.prompts import DOCUMENT, QUERY, resolve_prompt
from embedkit.errors import ConfigError, DataError
from embedkit.index.arrays import normalized
from embedkit.index.corpus import Corpus, CorpusSource, Document, as_corpus, batched
from embedkit.index.faiss_backend import FaissBackend
from embedkit.index.folder import DEFAULT_LOCK_TIMEOUT, check_replaceable, check_unchanged, commit, reading, writer_lock
from embedkit.index.quantized import quantization_record
from embedkit.index.spec import (
    BACKENDS,
    DEFAULT_TARGET_RECALL,
    Backend,
    IndexFileError,
    IndexMismatchError,
    IndexSpec,
    IndexWarning,
    TextBackend,
    backend_metric,
    check_device,
    check_metric,
    needs_encoder,
    parse_spec,
)
from embedkit.index.store import (
    MANIFEST_FILE,
    PAYLOADS_FILE,
    FileDigest,
    Manifest,
    PayloadStore,
    check_ids,
    check_listed,
    now,
    read_manifest,
    write_files,
)
from embedkit.index.tuning import (
    RECALL_AT,
    HeldOutQueries,
    SearchTuning,
    check_target_recall,
    query_count,
    tune_search,
    tuned_parameter,
)
from embedkit.progress import progress_bar
from embedkit.types import JsonValue, TextEncoder
from embedkit.version import __version__

if TYPE_CHECKING:
    from tqdm import tqdm

CHUNK_SIZE = 16384
"""Documents embedded and added at a time: the corpus's embeddings are never all in memory at once."""
BATCHES_PER_CALL = 16
"""Batches per encode call while building: the OpenVINO backend keeps one batch per stream in flight, so a call
of one batch would run on one core."""
SEARCH_BATCH = 4096
"""Queries embedded and searched at a time."""


class PromptMismatchWarning(IndexWarning):
    """The index's documents were embedded after another prompt than the one the encoder's model declares for
    documents, so queries embedded for that model may not match them well."""


@dataclass(frozen=True)
class SearchResult:
    """Search results, best first; unpacks like faiss's ``D, I``: ``scores, ids = index.search(...)``.

    Attributes:
        scores: ``[n, k]`` float32; similarities (cosine, ip), squared distances (l2), BM25 scores (``bm25``)
            or fused scores (``hybrid``). Empty slots (fewer than ``k`` results) hold ``-inf`` (``+inf`` for l2).
        ids: ``[n, k]`` external ids: int64 (empty slots ``-1``) or object holding ``str`` (empty slots ``None``).
        texts: ``[n, k]`` object array of texts when payloads were asked for, else ``None``.
        metadata: ``[n, k]`` object array of metadata dicts (or ``None``) when payloads were asked for.
    """

    scores: np.ndarray
    ids: np.ndarray
    texts: np.ndarray | None = None
    metadata: np.ndarray | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.scores
        yield self.ids


class ModelInfo(TypedDict):
    """The model whose embeddings an index holds: its name and the fingerprint of its weights."""

    name: str
    fingerprint: str


class IndexInfo(TypedDict):
    """What :meth:`Index.info` returns (and ``embedkit index info --json`` prints)."""

    path: str | None
    version: str | None
    spec: str
    metric: str
    normalize: bool
    dimension: int
    truncate_dim: int | None
    document_prompt: str
    count: int
    id_type: str | None
    model: ModelInfo
    created: str
    embedkit_version: str
    search_params: dict[str, float]
    quantization: dict[str, JsonValue]
    search_tuning: SearchTuning | None
    backend: dict[str, JsonValue]
    files: dict[str, FileDigest]


class Index:
    """A searchable, saveable set of embeddings of a corpus. Build one with :func:`build_index` or
    :meth:`Index.load`; the constructor is for those two.

    Attributes:
        path: the folder it was loaded from or last saved to (``None`` until then).
        version: the version of that folder it holds (``"v-000012"``, ``"."`` for an old-layout folder).
    """

    def __init__(
        self,
        backend: Backend,
        store: PayloadStore,
        manifest: Manifest,
        path: Path | None = None,
        version: str | None = None,
    ) -> None:
        self.backend = backend
        self.store = store
        self.manifest = manifest
        self.path = path
        self.version = version
        self._encoder: TextEncoder | None = None

    # -- the encoder -------------------------------------------------------------------------------------------
    @property
    def encoder(self) -> TextEncoder:
        """The encoder that embeds text queries: the one given, else the manifest's model, loaded on first use."""
        if self._encoder is None:
            if not self.embeds:
                raise ConfigError(f"index {self.manifest.spec!r} embeds nothing, so it has no encoder")
            from embedkit.encoders import load_encoder

            encoder = load_encoder(self.manifest.model_name, truncate_dim=self.manifest.truncate_dim)
            self.check_encoder(encoder)
            self._warn_prompt_mismatch(encoder)
            self._encoder = encoder
        return self._encoder

    @encoder.setter
    def encoder(self, encoder: TextEncoder) -> None:
        self.check_encoder(encoder)
        self._warn_prompt_mismatch(encoder)
        self._encoder = encoder

    @property
    def embeds(self) -> bool:
        """Whether the index embeds documents and queries (every kind but ``bm25``)."""
        return needs_encoder(self.manifest.spec)

    def check_encoder(self, encoder: TextEncoder) -> None:
        """Refuse an encoder whose model weights or dimension differ from those that built the index (any encoder
        fits an index that embeds nothing: it is not used).

        Raises:
            IndexMismatchError: names both models, their fingerprints and dimensions.
        """
        if not self.embeds:
            return
        fingerprint = model_fingerprint(encoder.model)
        if fingerprint == self.manifest.model_fingerprint and encoder.dim != self.manifest.dimension:
            cut = self.manifest.truncate_dim
            wanted = "without truncate_dim" if cut is None else f"with truncate_dim={cut} (--truncate-dim {cut})"
            raise IndexMismatchError(
                f"this index holds {_size(self.manifest.dimension, cut)} embeddings of model "
                f"{self.manifest.model_name!r}, but the encoder gives {_size(encoder.dim, truncation_of(encoder))} "
                f"ones; load the model {wanted}, or build a new index with this one"
            )
        if encoder.dim != self.manifest.dimension or fingerprint != self.manifest.model_fingerprint:
            raise IndexMismatchError(
                f"this index holds embeddings of model {self.manifest.model_name!r} "
                f"({self.manifest.model_fingerprint[:19]}, dimension {self.manifest.dimension}), but the encoder is "
                f"{encoder.name!r} ({fingerprint[:19]}, dimension {encoder.dim}); search with the model that built "
                "the index, or build a new index with this one"
            )

    def _warn_prompt_mismatch(self, encoder: TextEncoder) -> None:
        """A :class:`PromptMismatchWarning` when ``encoder``'s model declares another document prompt than the one
        the index's documents were embedded after (never for an index that embeds nothing)."""
        declared = resolve_prompt(encoder.prompts, DOCUMENT)
        recorded = self.manifest.document_prompt
        if self.embeds and declared != recorded:
            built = f"after the document prompt {recorded!r}" if recorded else "without a document prompt"
            wanted = f"declares the document prompt {declared!r}" if declared else "declares no document prompt"
            warnings.warn(
                f"this index was built {built}, but model {encoder.name!r} {wanted}: rebuild the index with the "
                "model's document prompt, or search with a query prompt that suits the index",
                PromptMismatchWarning,
                stacklevel=3,
            )

    # -- adding and removing -----------------------------------------------------------------------------------
    def _embed(self, texts: list[str], batch_size: int, prompt: str) -> np.ndarray:
        return self.encoder.encode(
            texts, batch_size=batch_size, normalize=self.manifest.normalize, show_progress=False, prompt=prompt
        )

    def _embed_batches(self, texts: list[str], batch_size: int, progress: tqdm) -> np.ndarray:
        """Documents through :meth:`_embed` after the recorded document prompt, :data:`BATCHES_PER_CALL` batches
        per call so that ``progress`` moves as they finish. Texts are taken longest first, as the encoder batches
        one call's texts, so that each batch pads as little as in one call for all."""
        vectors = np.empty((len(texts), self.manifest.dimension), dtype=np.float32)
        for positions in longest_first(texts, batch_size * BATCHES_PER_CALL):
            vectors[positions] = self._embed([texts[i] for i in positions], batch_size, self.manifest.document_prompt)
            progress.update(len(positions))
        return vectors

    def _check_dimension(self, vectors: np.ndarray) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.manifest.dimension:
            raise IndexMismatchError(
                f"vectors of shape {list(vectors.shape)} do not fit this index of dimension {self.manifest.dimension} "
                f"(model {self.manifest.model_name!r})"
            )

    def _prepared(self, vectors: np.ndarray) -> np.ndarray:
        """Given vectors as float32, normalised when the metric is cosine; checks the dimension."""
        vectors = np.asarray(vectors, dtype=np.float32)
        self._check_dimension(vectors)
        return normalized(vectors) if self.manifest.normalize else np.ascontiguousarray(vectors)

    def add(
        self,
        corpus: CorpusSource,
        *,
        embeddings: np.ndarray | None = None,
        batch_size: int = 64,
        chunk_size: int = CHUNK_SIZE,
        seed: int = 0,
        show_progress: bool | None = None,
    ) -> int:
        """Embed and add documents; returns how many were added.

        Ids are checked first (type, duplicates, ids already in the index), so a bad id fails before anything is
        embedded. The corpus is embedded ``chunk_size`` documents at a time. An index that needs training (IVF,
        PQ) is trained on its first add, on a seeded sample of the corpus whose embeddings are kept for the add.
        An index of texts (``bm25``, ``hybrid``) then rebuilds its text index from every stored document.

        The search parameters tuned when the index was built (:func:`build_index`) are kept, not tuned again:
        that would take the exact vectors of every document in the index, which a quantized index no longer
        holds, so the whole corpus would be embedded again. The manifest's ``search_tuning`` names the number of
        documents it was measured on; build the index again to tune it for a corpus that has grown much.

        Args:
            corpus: see :func:`~embedkit.index.corpus.as_corpus`.
            embeddings: ``[n, D]`` precomputed embeddings of the corpus's texts by this index's model, in corpus
                order; nothing is encoded then (an index that embeds nothing ignores them).
            batch_size: encoding batch size.
            chunk_size: documents embedded and added at a time.
            seed: seed of the training sample.
            show_progress: a progress bar; by default for 2,048 documents or more.

        Raises:
            DataError: a bad id or row; ``embeddings`` of the wrong length.
            ConfigError: too few documents to train the index.
        """
        return self._add(corpus, embeddings, batch_size, chunk_size, seed, show_progress, target_recall=None)

    def _add(
        self,
        corpus: CorpusSource,
        embeddings: np.ndarray | None,
        batch_size: int,
        chunk_size: int,
        seed: int,
        show_progress: bool | None,
        target_recall: float | None,
    ) -> int:
        """:meth:`add`; with a ``target_recall``, the search parameter is then tuned for it (see
        :mod:`embedkit.index.tuning`), against exact search over the documents of this add."""
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be at least 1, got {chunk_size}")
        documents = as_corpus(corpus)
        ids = [document.id for document in documents]
        id_type = check_ids(ids, self.store.id_type, documents.name)
        taken = self.store.present(ids) if len(self.store) else []
        if taken:
            raise DataError(f"{len(taken)} ids are already in the index, e.g. {taken[:3]}", documents.name)
        if not self.embeds:
            embeddings = None
        if embeddings is not None:
            embeddings = np.asarray(embeddings)
            self._check_dimension(embeddings)
            if len(embeddings) != len(ids):
                raise DataError(f"{len(embeddings)} embeddings for {len(ids)} documents", documents.name)
        tune = target_recall is not None and query_count(len(ids)) > 0 and tuned_parameter(self.backend) is not None
        sample_positions = np.zeros(0, dtype=np.int64)
        sample_vectors = np.zeros((0, self.manifest.dimension), dtype=np.float32)
        queries: HeldOutQueries | None = None
        if self.backend.needs_training or tune:
            sample_positions, sample_vectors, queries = self._sample(
                documents, len(ids), embeddings, batch_size, seed, show_progress, tune
            )
        progress = progress_bar("embedding and indexing", len(ids), show=show_progress)
        start = 0
        for chunk in batched(documents, chunk_size):
            if not self.embeds:
                with self.store.transaction():
                    self._insert_payloads(chunk)
                progress.update(len(chunk))
            else:
                vectors = self._chunk_vectors(
                    chunk, start, embeddings, sample_positions, sample_vectors, batch_size, progress
                )
                with self.store.transaction():
                    internal = self._insert_payloads(chunk)
                    if queries is not None:
                        vectors, internal = queries.withhold(start, vectors, internal)
                    self.backend.add(vectors, internal)
            start += len(chunk)
        progress.close()
        self.index_texts()
        self.manifest.count = len(self.backend)
        self.manifest.id_type = id_type
        if queries is not None and target_recall is not None:
            self._tune(queries, target_recall)
        return len(ids)

    def index_texts(self) -> None:
        """Rebuild the text index of a ``bm25`` or ``hybrid`` index from every stored document (nothing for other
        kinds): after an add or a remove, as BM25 cannot be updated in place (see :mod:`embedkit.index.bm25`)."""
        if isinstance(self.backend, TextBackend):
            self.backend.index_texts(*self.store.texts())

    def _tune(self, queries: HeldOutQueries, target_recall: float) -> None:
        """Set the search parameter that reaches ``target_recall`` for ``queries``, held out of an index that
        holds every other document; then add them, and record the tuning in the manifest."""
        if not isinstance(self.backend, FaissBackend):
            raise ConfigError(f"index {self.manifest.spec!r} has no search parameter to tune")
        tuning = tune_search(self.backend, queries, target_recall, len(self.backend) + len(queries.ids))
        queries.restore(self.backend)
        self.set_search_params(**{tuning["parameter"]: tuning["value"]})
        self.manifest.search_tuning = tuning
        self.manifest.count = len(self.backend)

    def _insert_payloads(self, documents: Sequence[Document]) -> np.ndarray:
        """Store the ids, texts and metadata of ``documents`` (inside a store transaction); ``[n]`` internal ids."""
        return self.store.insert(
            [d.id for d in documents],
            [d.text for d in documents],
            [text_id(d.text) for d in documents],
            [d.metadata for d in documents],
        )

    def _chunk_vectors(
        self,
        chunk: list[Document],
        start: int,
        embeddings: np.ndarray | None,
        sample_positions: np.ndarray,
        sample_vectors: np.ndarray,
        batch_size: int,
        progress: tqdm,
    ) -> np.ndarray:
        """``[len(chunk), D]`` vectors of the documents at ``start...``: given, kept from training, or embedded
        (``progress`` moves by each embedded batch, and by the given or kept vectors at once)."""
        if embeddings is not None:
            progress.update(len(chunk))
            return self._prepared(embeddings[start : start + len(chunk)])
        low, high = np.searchsorted(sample_positions, [start, start + len(chunk)])
        kept = np.zeros(len(chunk), dtype=bool)
        kept[sample_positions[low:high] - start] = True
        vectors = np.empty((len(chunk), self.manifest.dimension), dtype=np.float32)
        vectors[kept] = sample_vectors[low:high]
        if high > low:
            progress.update(high - low)
        if not kept.all():
            texts = [d.text for d, k in zip(chunk, kept, strict=True) if not k]
            vectors[~kept] = self._embed_batches(texts, batch_size, progress)
        return vectors

    def _sample(
        self,
        documents: Corpus,
        n: int,
        embeddings: np.ndarray | None,
        batch_size: int,
        seed: int,
        show: bool | None,
        tune: bool,
    ) -> tuple[np.ndarray, np.ndarray, HeldOutQueries | None]:
        """Embed the seeded samples needed before the first chunk: the training sample of an index that needs
        training (which is trained on it here), and with ``tune`` the corpus vectors that serve as tuning
        queries. Returns ``([s] sorted positions, [s, D] their vectors, the tuning queries)``."""
        training = np.zeros(0, dtype=np.int64)
        if self.backend.needs_training:
            size = self.backend.training_size(n)
            if size == 0:
                raise ConfigError(f"index {self.manifest.spec!r} must be trained, but the corpus is empty")
            training = training_positions(n, size, seed)
        queries = training_positions(n, query_count(n), seed) if tune else np.zeros(0, dtype=np.int64)
        positions = np.union1d(training, queries)
        if embeddings is not None:
            vectors = self._prepared(embeddings[positions])
        else:
            wanted = set(positions.tolist())
            texts = [d.text for position, d in enumerate(documents) if position in wanted]
            what = [name for name, wanted in (("training sample", len(training)), ("tuning queries", tune)) if wanted]
            progress = progress_bar(f"embedding the {' and '.join(what)}", len(texts), show=show)
            vectors = self._embed_batches(texts, batch_size, progress)
            progress.close()
        if len(training):
            self.backend.train(vectors[np.isin(positions, training)])
        held_out = None
        if tune:
            k = min(RECALL_AT, n - len(queries))
            held_out = HeldOutQueries(queries, vectors[np.isin(positions, queries)], k, self.backend.metric)
        return positions, vectors, held_out

    def remove(self, ids: Sequence[int | str]) -> int:
        """Remove documents by external id; returns how many were removed.

        Raises:
            DataError: some ids are not in the index (nothing is removed then).
        """
        ids = list(ids)
        internal, missing = self.store.internal_ids(ids)
        if missing:
            raise DataError(f"{len(missing)} of the ids to remove are not in the index, e.g. {missing[:3]}")
        with self.store.transaction():
            self.store.delete(internal)
            removed = self.backend.remove(internal)
            self.index_texts()
        self.manifest.count = len(self.backend)
        return removed

    # -- searching ---------------------------------------------------------------------------------------------
    def search_internal(
        self,
        queries: str | Sequence[str] | np.ndarray,
        k: int = 10,
        batch_size: int = 64,
        show_progress: bool | None = None,
        *,
        embeddings: np.ndarray | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, but returns ``(scores [n, k], internal ids [n, k] int64)``, for embedkit's own
        code (the miner) that maps ids itself. ``embeddings``: ``[n, D]`` precomputed embeddings of the query
        texts, used instead of embedding them (a ``hybrid`` index needs both)."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        lexical = self.backend if isinstance(self.backend, TextBackend) else None
        if lexical is not None and isinstance(queries, np.ndarray):
            raise ConfigError(f"index {self.manifest.spec!r} searches texts: give the query texts, not vectors")
        texts: list[str] | None = None
        vectors: np.ndarray | None = None
        if isinstance(queries, str):
            texts = [queries]
        elif isinstance(queries, np.ndarray):
            vectors = self._prepared(queries)
        else:
            texts = list(queries)
            if not all(isinstance(text, str) for text in texts):
                raise DataError("queries must be texts or an [n, D] array of vectors")
        if embeddings is not None and texts is not None and self.embeds:
            vectors = self._prepared(embeddings)
            if len(vectors) != len(texts):
                raise DataError(f"{len(vectors)} embeddings for {len(texts)} queries")
        query_prompt = ""
        if texts is not None and vectors is None and self.embeds:
            query_prompt = resolve_prompt(self.encoder.prompts, QUERY, prompt_name=prompt_name, prompt=prompt)
        total = len(texts) if texts is not None else len(vectors)  # type: ignore[arg-type]
        scores, found = [], []
        progress = progress_bar("searching", total, show=show_progress)
        for start in range(0, total, SEARCH_BATCH):
            block_texts = None if texts is None else texts[start : start + SEARCH_BATCH]
            if vectors is not None:
                block = vectors[start : start + SEARCH_BATCH]
            elif self.embeds:
                block = self._embed(block_texts, batch_size, query_prompt)  # type: ignore[arg-type]
            else:
                block = None
            if lexical is not None:
                block_scores, block_ids = lexical.search_texts(block_texts, block, int(k))  # type: ignore[arg-type]
            else:
                block_scores, block_ids = self.backend.search(block, int(k))  # type: ignore[arg-type]
            scores.append(block_scores)
            found.append(block_ids)
            progress.update(len(block_ids))
        progress.close()
        if not scores:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(scores), np.concatenate(found)

    def search(
        self,
        queries: str | Sequence[str] | np.ndarray,
        k: int = 10,
        *,
        return_payloads: bool = False,
        batch_size: int = 64,
        show_progress: bool | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> SearchResult:
        """The ``k`` nearest documents of each query.

        Args:
            queries: a text, a list of texts (embedded with :attr:`encoder`), or ``[n, D]`` vectors (normalised
                here when the metric is cosine; not for ``bm25`` and ``hybrid`` indexes, which search texts).
            k: results per query.
            return_payloads: also return the texts and metadata of the results.
            batch_size: encoding batch size.
            show_progress: a progress bar; by default for 2,048 queries or more.
            prompt_name: text queries get the encoder's prompt of this name instead of its query prompt.
            prompt: text queries get this prompt instead of the encoder's query prompt (BM25 reads them without).

        Raises:
            IndexMismatchError: vectors of another dimension.
            ConfigError: ``k`` is not a positive integer; both ``prompt`` and ``prompt_name``, or an unknown name.
        """
        scores, internal = self.search_internal(
            queries, k, batch_size, show_progress, prompt_name=prompt_name, prompt=prompt
        )
        externals, _ = self.store.id_arrays()
        texts, metadata = self.store.payloads(internal) if return_payloads else (None, None)
        return SearchResult(scores=scores, ids=externals[internal], texts=texts, metadata=metadata)

    def set_search_params(self, **params: float) -> None:
        """Set search-time parameters (faiss: ``nprobe`` for IVF, ``efSearch`` for HNSW; torch: ``chunk_size``,
        ``query_chunk_size``); they are saved with the index."""
        self.backend.set_search_params(params)
        self.manifest.search_params = {**self.manifest.search_params, **params}

    # -- persistence -------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT) -> Path:
        """Save as a new version of the index folder ``path`` (see :mod:`embedkit.index.folder`).

        A failure or a crash at any point leaves the previous version in place, and readers see either version
        whole. The save holds the writers' lock of ``path``; to keep it from load to save, use :meth:`update`.

        Args:
            path: the index folder; it must be absent, empty or an index folder.
            lock_timeout: seconds to wait for another writer of ``path`` (``None``: as long as it takes).

        Raises:
            IndexConflictError: this index was loaded from ``path``, and another writer saved it since.
            LockTimeoutError: another writer held the lock for ``lock_timeout`` seconds.
            ConfigError: ``path`` is something other than an index folder.
        """
        root = Path(path)
        with writer_lock(root, lock_timeout):
            check_replaceable(root)
            if self.version is not None and self.path is not None and self.path.resolve() == root.resolve():
                check_unchanged(root, self.version)
            self.manifest.count = len(self.backend)
            self.manifest.embedkit_version = __version__
            self.version = commit(root, self._write_files)
        self.path = root
        return root

    def _write_files(self, folder: Path) -> None:
        self.manifest.quantization = quantization_record(self.backend)
        write_files(folder, self.manifest, [self.backend.save, self.store.save])

    @classmethod
    @contextlib.contextmanager
    def update(
        cls,
        path: str | os.PathLike[str],
        encoder: TextEncoder | None = None,
        device: str = "auto",
        *,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
    ) -> Iterator[Index]:
        """Load the index at ``path`` for the block to change, and save it when the block ends, holding the
        writers' lock from load to save, so that another writer's change can be neither lost nor lose this one::

            with Index.update("idx/") as index:
                index.add(more_documents)

        When the block raises, nothing is saved. The arguments are :meth:`load`'s, and ``lock_timeout``
        :meth:`save`'s.
        """
        with writer_lock(path, lock_timeout):
            index = cls.load(path, encoder, device)
            yield index
            index.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], encoder: TextEncoder | None = None, device: str = "auto") -> Index:
        """Load the current version of an index folder, checking every file against the manifest.

        Args:
            path: the folder :meth:`save` wrote.
            encoder: the encoder for text queries; checked against the manifest now (a
                :class:`PromptMismatchWarning` when its model declares another document prompt than the index was
                built with). ``None``: the manifest's model is loaded (and checked) on the first text query.
            device: ``"auto"``, ``"gpu"`` or ``"cpu"``: where faiss indexes search.

        Raises:
            IndexFileError: a missing, corrupt or truncated file, files that disagree with each other, or a
                manifest that does not vouch for every file or whose content was edited.
            IndexMismatchError: ``encoder`` is another model or dimension.
        """
        root = Path(path)
        with reading(root) as (folder, version):
            backend, store, manifest = _load_files(folder, device)
        index = cls(backend, store, manifest, root, version)
        if encoder is not None:
            index.encoder = encoder
        return index

    def info(self) -> IndexInfo:
        """What the index holds: spec, metric, model, counts, backend details, files."""
        return {
            "path": None if self.path is None else str(self.path),
            "version": self.version,
            "spec": self.manifest.spec,
            "metric": self.manifest.metric,
            "normalize": self.manifest.normalize,
            "dimension": self.manifest.dimension,
            "truncate_dim": self.manifest.truncate_dim,
            "document_prompt": self.manifest.document_prompt,
            "count": len(self.backend),
            "id_type": self.manifest.id_type,
            "model": {"name": self.manifest.model_name, "fingerprint": self.manifest.model_fingerprint},
            "created": self.manifest.created,
            "embedkit_version": self.manifest.embedkit_version or __version__,
            "search_params": dict(self.manifest.search_params),
            "quantization": quantization_record(self.backend),
            "search_tuning": self.manifest.search_tuning,
            "backend": self.backend.describe(),
            "files": dict(self.manifest.files),
        }

    def __len__(self) -> int:
        return len(self.backend)

    def __repr__(self) -> str:
        return f"Index(spec={self.manifest.spec!r}, metric={self.manifest.metric!r}, count={len(self)})"


def _load_files(folder: Path, device: str) -> tuple[Backend, PayloadStore, Manifest]:
    """The backend, payloads and manifest of one version folder, each file checked against the manifest."""
    manifest = read_manifest(folder)
    spec = parse_spec(manifest.spec)
    factory = BACKENDS.get(spec.backend)
    check_listed(manifest, folder / MANIFEST_FILE, factory.FILES)
    backend = factory.load(folder, spec, manifest.dimension, backend_metric(manifest.metric), check_device(device))
    store = PayloadStore.open(folder / PAYLOADS_FILE)
    if not len(backend) == len(store) == manifest.count:
        raise IndexFileError(
            f"{folder}: the files disagree: the manifest counts {manifest.count} documents, the vectors "
            f"{len(backend)}, the payloads {len(store)}"
        )
    if manifest.search_params:
        backend.set_search_params(manifest.search_params)
    return backend, store, manifest


def truncation_of(encoder: TextEncoder) -> int | None:
    """The ``truncate_dim`` an encoder cuts its embeddings to (an :class:`~embedkit.encoders.Encoder` or a
    :class:`~embedkit.encoders.truncation.TruncatedEncoder`); ``None`` for one that does not cut them."""
    return getattr(encoder, "truncate_dim", None)


def _size(dimension: int, truncate_dim: int | None) -> str:
    """``"384-dimensional"``, or ``"128-dimensional (truncate_dim 128)"`` for cut embeddings."""
    return f"{dimension}-dimensional" + ("" if truncate_dim is None else f" (truncate_dim {truncate_dim})")


def training_positions(n: int, size: int, seed: int) -> np.ndarray:
    """``[size]`` sorted positions of the seeded sample of ``n`` documents that an IVF/PQ index is trained on."""
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def empty_index(
    encoder: TextEncoder | None, spec: str | IndexSpec, metric: str, device: str, document_prompt: str = ""
) -> Index:
    """An index with nothing in it yet, for ``encoder``'s embeddings of documents after ``document_prompt`` (see
    :func:`build_index`); an index that embeds nothing (``bm25``) records no model (name, fingerprint ``""``,
    dimension 0, no prompt) and ignores ``encoder``."""
    parsed = parse_spec(spec)
    metric = check_metric(metric)
    embeds = needs_encoder(parsed)
    if embeds and encoder is None:
        raise ConfigError(f"index {str(parsed)!r} embeds its documents: give an encoder")
    model = encoder if embeds else None
    dim = 0 if model is None else model.dim
    backend = BACKENDS.get(parsed.backend).create(parsed, dim, backend_metric(metric), check_device(device))
    manifest = Manifest(
        spec=str(parsed),
        metric=metric,
        normalize=metric == "cosine",
        dimension=dim,
        # where the weights can be loaded again (a fine-tuned Encoder keeps its base model's name)
        model_name="" if model is None else getattr(model, "source", model.name),
        model_fingerprint="" if model is None else model_fingerprint(model.model),
        embedkit_version=__version__,
        created=now(),
        truncate_dim=truncation_of(encoder),
        document_prompt="" if model is None else document_prompt,
    )
    index = Index(backend, PayloadStore.create(), manifest)
    if model is not None:
        # the encoder that builds the index: its weights are the manifest's, and a prompt chosen for this build is
        # no mismatch to warn about
        index.check_encoder(model)
        index._encoder = model
    return index


def document_prompt(
    encoder: TextEncoder | None, spec: str | IndexSpec, prompt_name: str | None, prompt: str | None
) -> str:
    """The prompt an index of ``spec`` embeds its documents after: ``prompt``, the model's prompt ``prompt_name``,
    else its document prompt; ``""`` for an index that embeds nothing.

    Raises:
        ConfigError: both ``prompt`` and ``prompt_name``, or a name the model has no prompt for.
    """
    if encoder is None or not needs_encoder(spec):
        return ""
    return resolve_prompt(encoder.prompts, DOCUMENT, prompt_name=prompt_name, prompt=prompt)


def build_index(
    encoder: TextEncoder | None,
    corpus: CorpusSource,
    spec: str | IndexSpec = "torch",
    metric: str = "cosine",
    *,
    embeddings: np.ndarray | None = None,
    batch_size: int = 64,
    chunk_size: int = CHUNK_SIZE,
    device: str = "auto",
    seed: int = 0,
    show_progress: bool | None = None,
    target_recall: float | None = DEFAULT_TARGET_RECALL,
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> Index:
    """Embed a corpus with ``encoder`` and index it; an approximate index (IVF, HNSW) gets the search parameter
    that reaches ``target_recall`` (see :mod:`embedkit.index.tuning`).

    Documents are embedded after the model's document prompt (see :mod:`embedkit.encoders.prompts`), or the
    prompt given; the manifest records it.

    Args:
        encoder: any :class:`~embedkit.types.TextEncoder` (its ``name``, ``dim`` and ``model`` go into the
            manifest); ``None`` for an index that embeds nothing (``bm25``), which ignores it anyway.
        corpus: a jsonl/csv/tsv/parquet/txt file, a BEIR folder or its ``corpus.jsonl`` (text = title + " " +
            text), a list of texts (ids 0..n-1), or a list of ``(id, text[, metadata])`` (see
            :func:`~embedkit.index.corpus.as_corpus`).
        spec: ``"torch"``, ``"torch:cuda"``, ``"faiss:Flat"``, ``"faiss:IVF1024,Flat"``, ``"faiss:HNSW32"``,
            ``"bm25"``, ``"hybrid:faiss:Flat"``, ... (see :mod:`embedkit.index.bm25`, :mod:`embedkit.index.hybrid`).
        metric: ``"cosine"`` (normalised inner product), ``"ip"`` or ``"l2"``.
        embeddings: ``[n, D]`` precomputed embeddings of the corpus by ``encoder``, in corpus order.
        batch_size: encoding batch size.
        chunk_size: documents embedded and added at a time (bounds memory).
        device: ``"auto"`` (faiss on the GPU when it sees one), ``"gpu"`` or ``"cpu"``.
        seed: seed of the training sample of IVF/PQ indexes and of the tuning queries.
        show_progress: progress bars; by default for 2,048 documents or more.
        target_recall: the recall@10 against exact search to tune ``nprobe`` (IVF) or ``efSearch`` (HNSW) for,
            with a tenth of the corpus (at most 1,000 documents) as queries, held out of the index while it is
            tuned; the smallest value that reaches it is saved with the index (``manifest.search_tuning`` says
            what was measured). ``None``: faiss's defaults.
        prompt_name: embed documents after the model's prompt of this name instead of its document prompt.
        prompt: embed documents after this prompt instead of the model's document prompt; ``embeddings`` given
            must have been embedded after it too.

    Raises:
        ConfigError: a ``target_recall`` outside ``(0, 1]``; too few documents to train the index; both ``prompt``
            and ``prompt_name``, or a name the model has no prompt for.

    Warns:
        IndexWarning: no value of the parameter reaches ``target_recall`` (the best one is kept).
    """
    target = check_target_recall(target_recall)
    index = empty_index(encoder, spec, metric, device, document_prompt(encoder, spec, prompt_name, prompt))
    index._add(corpus, embeddings, batch_size, chunk_size, seed, show_progress, target_recall=target)
    return index
