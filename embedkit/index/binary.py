"""Binary codes in a faiss binary index: ``faiss:BFlat``, ``faiss:BIVF1024``, ``faiss:BHNSW32`` (the names of
``faiss.index_binary_factory``), searched by Hamming distance.

A vector's code keeps the sign of each dimension: bit ``i`` is 1 where ``x_i > 0``, eight dimensions packed to a
byte by ``numpy.packbits`` (first dimension in the highest bit), exactly as sentence-transformers'
``quantize_embeddings(x, precision="ubinary")``. A dimension that is not a multiple of 8 is padded with 0 bits,
which every code shares, so they add nothing to a distance. A 384-dimensional float32 vector (1,536 bytes) becomes
48 bytes.

Scores are the cosine similarity of the sign vectors, ``1 - 2 * hamming / D`` (for ``u, v`` in ``{-1, 1}^D``,
``u.v = D - 2 * hamming(u, v)``), whatever the metric: the codes keep no lengths, so the metric must be cosine or
ip. Rescoring with the float or int8 vectors (``faiss:BFlat,rescore=4``, :mod:`embedkit.index.rescore`) gives the
metric's own scores back. Binary indexes search on the CPU, where popcounts are fast (faiss has a GPU version of
the flat binary index only).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from embedkit.errors import ConfigError
from embedkit.index.faiss_backend import INDEX_FILE, TRAINING_CAP, _faiss_message, clustering_sample_size
from embedkit.index.spec import IndexFileError, pad_score
from embedkit.types import JsonValue

BINARY_FACTORIES = "BFlat, BIVF<nlist>, BHNSW<M>, BIVF<nlist>_HNSW<M>"
SEARCH_PARAMS = {"nprobe": "BIVF", "efSearch": "BHNSW"}
"""The search parameters of binary indexes, and the indexes that have them."""
THRESHOLD = "bit = 1 where the value is > 0 (its sign), packed by numpy.packbits: quantize_embeddings' 'ubinary'"


def is_binary_factory(factory: str) -> bool:
    """Whether ``factory`` names a faiss binary index (faiss's binary factory strings start with ``B``)."""
    return factory.startswith("B")


def binarize(vectors: np.ndarray) -> np.ndarray:
    """``[n, D]`` float vectors -> ``[n, ceil(D / 8)]`` uint8 sign bits, as ``quantize_embeddings(vectors,
    precision="ubinary")``."""
    return np.packbits(np.asarray(vectors) > 0, axis=-1)


def _build(factory: str, bits: int) -> faiss.IndexBinary:
    """``faiss.index_binary_factory`` with int64 ids: IVF stores ids itself, anything else is wrapped in an id map
    (``IndexBinaryIDMap``: 8 bytes a vector; ``IndexBinaryIDMap2`` would add a hash map from id to position, larger
    than a 48-byte code, for a reconstruction by id that nothing here needs)."""
    index = faiss.index_binary_factory(bits, factory)
    if not isinstance(faiss.downcast_IndexBinary(index), faiss.IndexBinaryIVF):
        index = faiss.IndexBinaryIDMap(index)
    return index


def _structure(index: faiss.IndexBinary) -> str:
    """``IndexBinaryIDMap(IndexBinaryHNSW)``, ``IndexBinaryIVF(nlist=256)``: what a binary index is built of."""
    index = faiss.downcast_IndexBinary(index)
    name = type(index).__name__
    if isinstance(index, faiss.IndexBinaryIDMap):  # IDMap2 too
        return f"{name}({_structure(index.index)})"
    if isinstance(index, faiss.IndexBinaryIVF):
        return f"{name}(nlist={index.nlist})"
    return name


class BinaryBackend:
    """A faiss binary index over the sign bits of ``[n, D]`` float vectors, with int64 ids.

    Args:
        factory: a binary factory string (``BFlat``, ``BIVF256``, ``BHNSW32``).
        dim: the float dimension ``D``; the codes have ``8 * ceil(D / 8)`` bits.
        index: the binary index (already holding ids).
    """

    def __init__(self, factory: str, dim: int, index: faiss.IndexBinary) -> None:
        self.factory = factory
        self.dim = dim
        self.metric = "ip"
        self.index = index
        self.search_params: dict[str, float] = {}

    @staticmethod
    def _check(factory: str, metric: str, device: str) -> None:
        if metric == "l2":
            raise ConfigError(
                f"faiss:{factory} keeps one bit (the sign) per dimension, which ranks by angle, not distance; use "
                "metric cosine or ip, or a float index (e.g. faiss:SQ8) for l2"
            )
        if device == "gpu":
            raise ConfigError(
                f"faiss:{factory} is a binary index, which embedkit searches on the CPU; use device 'auto' or 'cpu'"
            )

    @classmethod
    def create(cls, factory: str, dim: int, metric: str, device: str) -> BinaryBackend:
        cls._check(factory, metric, device)
        bits = 8 * -(-dim // 8)
        try:
            index = _build(factory, bits)
        except RuntimeError as error:
            raise ConfigError(
                f"faiss cannot build the binary index {factory!r} ({_faiss_message(error)}); valid binary factories: "
                f"{BINARY_FACTORIES}"
            ) from None
        return cls(factory, dim, index)

    @classmethod
    def load(cls, folder: Path, factory: str, dim: int, metric: str, device: str) -> BinaryBackend:
        cls._check(factory, metric, device)
        path = folder / INDEX_FILE
        try:
            index = faiss.read_index_binary(str(path))
        except RuntimeError as error:
            raise IndexFileError(f"{path}: not a readable faiss binary index ({_faiss_message(error)})") from None
        expected = faiss.deserialize_index_binary(faiss.serialize_index_binary(_build(factory, 8 * -(-dim // 8))))
        if index.d != expected.d or _structure(index) != _structure(expected):
            raise IndexFileError(
                f"{path}: the file holds {_structure(index)} of {index.d} bits, but the manifest's spec "
                f"'faiss:{factory}' for dimension {dim} builds {_structure(expected)} of {expected.d} bits"
            )
        return cls(factory, dim, index)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def _inner(self) -> faiss.IndexBinary:
        """The index inside the id map, or the IVF index itself."""
        index = faiss.downcast_IndexBinary(self.index)
        if isinstance(index, faiss.IndexBinaryIDMap):  # IDMap2 too
            return faiss.downcast_IndexBinary(index.index)
        return index

    @property
    def needs_training(self) -> bool:
        return not self.index.is_trained

    def training_size(self, n: int) -> int:
        if self.index.is_trained:
            return 0
        inner = self._inner()
        if isinstance(inner, faiss.IndexBinaryIVF):
            return clustering_sample_size([("IVF lists", int(inner.nlist), inner.cp)], n, self.factory)
        return min(n, TRAINING_CAP)

    def train(self, vectors: np.ndarray) -> None:
        self.index.train(binarize(vectors))

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index.add_with_ids(binarize(vectors), np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        try:
            return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
        except RuntimeError:  # HNSW graphs cannot remove: rebuild from the codes, which are exact
            inner, wrapper = self._inner(), faiss.downcast_IndexBinary(self.index)
            if not isinstance(wrapper, faiss.IndexBinaryIDMap):
                raise
            current = faiss.vector_to_array(wrapper.id_map)
            keep = ~np.isin(current, ids)
            try:
                codes = inner.reconstruct_n(0, inner.ntotal)
            except RuntimeError as error:
                raise ConfigError(
                    f"faiss:{self.factory} can neither remove codes nor reconstruct them ({_faiss_message(error)}); "
                    "rebuild the index without these ids"
                ) from None
            fresh = faiss.deserialize_index_binary(faiss.serialize_index_binary(inner))  # with its efSearch
            fresh.reset()
            self.index = faiss.IndexBinaryIDMap(fresh)
            self.index.add_with_ids(codes[keep], current[keep])
            return int((~keep).sum())

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        distances, ids = self.index.search(binarize(queries), k)
        scores = 1 - 2 * distances.astype(np.float32) / self.dim
        scores[ids < 0] = pad_score(self.metric)
        return scores, ids

    def set_search_params(self, params: dict[str, float]) -> None:
        inner = self._inner()
        targets = {"nprobe": inner if isinstance(inner, faiss.IndexBinaryIVF) else None}
        targets["efSearch"] = inner.hnsw if isinstance(inner, faiss.IndexBinaryHNSW) else None
        for name, value in params.items():
            if targets.get(name) is None or int(value) < 1:
                valid = ", ".join(f"{param} ({kind})" for param, kind in SEARCH_PARAMS.items())
                raise ConfigError(
                    f"faiss:{self.factory} has no search parameter {name}={value}; binary indexes have {valid}, "
                    "each at least 1"
                )
        for name, value in params.items():
            setattr(targets[name], name, int(value))
        self.search_params = {**self.search_params, **params}

    def save(self, folder: Path) -> list[str]:
        faiss.write_index_binary(self.index, str(folder / INDEX_FILE))
        return [INDEX_FILE]

    def quantization(self) -> dict[str, JsonValue]:
        """What the manifest records about the codes."""
        return {
            "codes": "binary",
            "bits_per_dimension": 1,
            "code_bytes": int(self.index.code_size),
            "threshold": THRESHOLD,
            "score": "1 - 2 * hamming / dimension (the cosine of the sign vectors)",
        }

    def describe(self) -> dict[str, JsonValue]:
        inner = self._inner()
        info: dict[str, JsonValue] = {
            "backend": "faiss",
            "factory": self.factory,
            "faiss_class": type(inner).__name__,
            "ntotal": len(self),
            "is_trained": bool(self.index.is_trained),
            "device": "cpu",
            "code_bytes": int(self.index.code_size),
            "search_params": dict(self.search_params),
        }
        if isinstance(inner, faiss.IndexBinaryIVF):
            info["nlist"] = int(inner.nlist)
        return info
