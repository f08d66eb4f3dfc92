"""The ``bm25`` backend: Okapi BM25 over the documents' texts, computed by bm25s.

bm25s (Lù, 2024, "BM25S: Orders of magnitude faster lexical search via eager sparse scoring") is pure Python
over numpy and scipy: it scores every (term, document) pair once at indexing time into a sparse matrix, so that a
query sums a few of its rows. Pyserini (Lucene) was the alternative; it needs Java 21 and a Lucene jar of its own,
more than a Python toolkit should ask of every user, and bm25s reproduces Lucene's BM25 (its ``lucene`` variant,
used here: ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``).

Text analysis is fixed, English, and the same for documents and queries: lower case, words of two or more letters
or digits (bm25s's and scikit-learn's pattern), bm25s's English stop words removed, Snowball's English stemmer
(PyStemmer). The spec sets BM25's two parameters: ``bm25`` is bm25s's ``k1=1.5, b=0.75``, and
``bm25:k1=0.9,b=0.4`` are Anserini's defaults.

A document that shares no term with the query scores 0 and is not returned, so a search can return fewer than
``k`` documents (the rest is padding): ranking documents that do not match would add noise to a fusion.

Updates: bm25s cannot add documents to, or remove them from, an index it built (every score depends on the
corpus's document frequencies and mean length), so each add or remove rebuilds the BM25 index from the texts that
the index's payloads hold (:meth:`BM25Backend.index_texts`, called by :class:`~embedkit.index.Index`). That
costs one tokenisation of the whole corpus per change: add large batches rather than many small ones.

Files: bm25s's own, written by ``BM25.save`` and read by ``BM25.load`` without pickle (numpy arrays, JSON
vocabulary and parameters), each named ``bm25.*``; and ``bm25.ids.safetensors``, the internal id of each row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from embedkit.errors import ConfigError, require
from embedkit.fsutil import follow_umask
from embedkit.index.spec import BACKENDS, IndexFileError, IndexSpec, number_option, parse_options
from embedkit.types import JsonValue

if TYPE_CHECKING:
    import bm25s

K1, B = 1.5, 0.75
METHOD = "lucene"
STOPWORDS = "en"
STEMMER = "english"
IDS_FILE = "bm25.ids.safetensors"
BM25S_FILES = {
    "data_name": "bm25.data.csc.index.npy",
    "indices_name": "bm25.indices.csc.index.npy",
    "indptr_name": "bm25.indptr.csc.index.npy",
    "vocab_name": "bm25.vocab.index.json",
    "params_name": "bm25.params.index.json",
}
"""bm25s's file names (its ``save``/``load`` arguments), prefixed so that they name their backend in the folder."""


def _bm25s() -> ModuleType:
    """The bm25s module, or a one-line error naming the extra that installs it (with the stemmer)."""
    require("bm25s", "lexical", "the bm25 index")
    require("Stemmer", "lexical", "the bm25 index (its stemmer, PyStemmer)")
    import bm25s

    return bm25s


class BM25Backend:
    """BM25 over texts under int64 internal ids (see the module docs). Embeds nothing: :meth:`add` is refused.

    Args:
        spec: ``bm25`` or ``bm25:k1=...,b=...``.
        k1: term-frequency saturation.
        b: document-length normalisation.
    """

    FILES: ClassVar[tuple[str, ...]] = (*BM25S_FILES.values(), IDS_FILE)
    embeds: ClassVar[bool] = False

    def __init__(self, spec: IndexSpec, k1: float, b: float) -> None:
        self.spec = spec
        self.k1 = k1
        self.b = b
        self.dim = 0
        self.metric = "ip"  # higher is better
        self._bm25s = _bm25s()
        import Stemmer

        self._stemmer = Stemmer.Stemmer(STEMMER)
        self._ids = np.zeros(0, dtype=np.int64)
        self._retriever = self._empty_retriever()

    @classmethod
    def parameters(cls, spec: IndexSpec) -> tuple[float, float]:
        """``(k1, b)`` of a ``bm25`` spec.

        Raises:
            ConfigError: an unknown option, or ``k1 < 0`` or ``b`` outside ``[0, 1]``.
        """
        options = parse_options(spec, spec.options, ("k1", "b"))
        k1 = number_option(spec, "k1", options["k1"], low=0) if "k1" in options else K1
        b = number_option(spec, "b", options["b"], low=0, high=1) if "b" in options else B
        return k1, b

    @classmethod
    def create(cls, spec: IndexSpec, dim: int, metric: str, device: str) -> BM25Backend:
        if metric == "l2":
            raise ConfigError(f"index spec {str(spec)!r}: BM25 scores are similarities; use metric cosine or ip, not l2")
        return cls(spec, *cls.parameters(spec))

    @classmethod
    def load(cls, folder: Path, spec: IndexSpec, dim: int, metric: str, device: str) -> BM25Backend:
        backend = cls.create(spec, dim, metric, device)
        try:
            retriever = backend._bm25s.BM25.load(
                folder, **BM25S_FILES, load_corpus=False, mmap=False, allow_pickle=False, show_progress=False
            )
            ids = load_file(str(folder / IDS_FILE)).get("ids")
        except (OSError, ValueError, TypeError, KeyError, ImportError, SafetensorError) as error:
            raise IndexFileError(f"{folder}: not a readable bm25s index ({type(error).__name__}: {error})") from None
        stored = (retriever.k1, retriever.b, retriever.method)
        if stored != (backend.k1, backend.b, METHOD):
            raise IndexFileError(
                f"{folder / BM25S_FILES['params_name']}: holds k1={stored[0]}, b={stored[1]}, method {stored[2]}, "
                f"but the manifest's spec {str(spec)!r} means k1={backend.k1}, b={backend.b}, method {METHOD}"
            )
        if ids is None or ids.ndim != 1 or len(ids) != retriever.scores["num_docs"]:
            raise IndexFileError(
                f"{folder / IDS_FILE}: expected one id per document of the bm25s index "
                f"({retriever.scores['num_docs']}); the file holds something else"
            )
        backend._retriever, backend._ids = retriever, ids.astype(np.int64)
        return backend

    def _empty_retriever(self) -> bm25s.BM25:
        """A bm25s index of no documents (bm25s cannot index an empty corpus, but saves and loads this one)."""
        retriever = self._bm25s.BM25(k1=self.k1, b=self.b, method=METHOD)
        retriever.scores = {
            "data": np.zeros(0, dtype=np.float32),
            "indices": np.zeros(0, dtype=np.int32),
            "indptr": np.zeros(1, dtype=np.int32),
            "num_docs": 0,
        }
        retriever.vocab_dict = {}
        retriever.nonoccurrence_array = None
        return retriever

    def tokenize(self, texts: Sequence[str], return_ids: bool) -> bm25s.tokenization.Tokenized | list[list[str]]:
        """The module docs' analysis: token ids and vocabulary (``return_ids``), or each text's list of terms."""
        return self._bm25s.tokenize(
            list(texts), stopwords=STOPWORDS, stemmer=self._stemmer, return_ids=return_ids, show_progress=False
        )

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def needs_training(self) -> bool:
        return False

    def training_size(self, n: int) -> int:
        return 0

    def train(self, vectors: np.ndarray) -> None:
        raise ConfigError("a bm25 index needs no training")

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        raise ConfigError("a bm25 index holds texts, not vectors; it is built from the documents' texts")

    def remove(self, ids: np.ndarray) -> int:
        """How many of ``ids`` the index holds; the rows go when :meth:`index_texts` rebuilds it without them
        (the Index calls it right after)."""
        return int(np.isin(self._ids, ids).sum())

    def index_texts(self, ids: np.ndarray, texts: Sequence[str]) -> None:
        """Build the BM25 index of exactly these documents (``[n]`` int64 ids, their texts), replacing any other."""
        retriever = self._empty_retriever()
        if len(texts):
            retriever = self._bm25s.BM25(k1=self.k1, b=self.b, method=METHOD)
            retriever.index(self.tokenize(texts, return_ids=True), show_progress=False)
        self._retriever, self._ids = retriever, np.asarray(ids, dtype=np.int64).copy()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise ConfigError("a bm25 index searches texts, not vectors: give the query texts")

    def search_texts(self, texts: Sequence[str], vectors: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``[n]`` query texts -> ``(scores [n, k] float32, ids [n, k] int64)``, best first; documents that match
        no query term are left out (score ``-inf``, id ``-1``). ``vectors`` are not used."""
        scores = np.full((len(texts), k), -np.inf, dtype=np.float32)
        found = np.full((len(texts), k), -1, dtype=np.int64)
        width = min(k, len(self._ids))
        if width == 0 or not len(texts):
            return scores, found
        positions, values = self._retriever.retrieve(
            self.tokenize(texts, return_ids=False), k=width, show_progress=False, n_threads=0
        )
        matched = values > 0
        scores[:, :width] = np.where(matched, values, -np.inf)
        found[:, :width] = np.where(matched, self._ids[positions], -1)
        return scores, found

    def set_search_params(self, params: dict[str, float]) -> None:
        if params:
            raise ConfigError(f"a bm25 index has no search parameters, got {', '.join(params)}")

    def save(self, folder: Path) -> list[str]:
        self._retriever.save(folder, **BM25S_FILES, allow_pickle=False, show_progress=False)
        save_file({"ids": np.ascontiguousarray(self._ids)}, str(folder / IDS_FILE))
        follow_umask(folder / IDS_FILE)
        return list(self.FILES)

    def describe(self) -> dict[str, JsonValue]:
        return {
            "backend": "bm25",
            "library": f"bm25s {self._bm25s.__version__}",
            "method": METHOD,
            "k1": self.k1,
            "b": self.b,
            "ntotal": len(self),
            "vocabulary": len(self._retriever.vocab_dict),
            "stopwords": STOPWORDS,
            "stemmer": STEMMER,
        }


BACKENDS.register("bm25", BM25Backend)
