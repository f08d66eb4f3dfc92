"""The ``faiss:<factory string>`` backend: any faiss index, on the GPU when the installed faiss sees one.
(:mod:`embedkit.index.quantized` registers it, and reads binary factory strings and rescoring options too.)

The factory string is faiss's own (``Flat``, ``IVF1024,Flat``, ``HNSW32``, ``IVF4096,PQ64``, ``PQ32``,
``OPQ16,IVF256,PQ16``, ...). Vectors carry int64 ids: IVF indexes store ids natively; every other index is
wrapped in ``IndexIDMap2``, which keeps an id per vector and can reconstruct by id.

Training (IVF lists, PQ codebooks, OPQ/PCA transforms) uses a seeded sample of the corpus of at most 256
vectors per centroid, the most faiss's k-means uses anyway. A corpus with fewer vectors than centroids is an
error that says what to change; one with fewer than faiss's recommended 39 per centroid is a warning.

On the GPU: the CPU index stays the source of truth (adds, removes and saves happen there) and a GPU copy is
made for searching, sharded over every GPU when there are several. faiss GPU indexes return at most 2048
results per query (and probe at most 2048 lists), so larger searches run on the CPU index.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Protocol

import faiss
import numpy as np

from embedkit.errors import ConfigError
from embedkit.index.arrays import aligned
from embedkit.index.spec import IndexFileError, IndexSpec, IndexWarning, pad_score
from embedkit.types import JsonValue

INDEX_FILE = "index.faiss"
DEFAULT_FACTORY = "Flat"
GPU_MAX_K = 2048
"""faiss GPU indexes answer at most this many results per query and probe at most this many IVF lists."""
MAX_POINTS_PER_CENTROID = 256  # faiss's k-means subsamples to this many points per centroid
MIN_POINTS_PER_CENTROID = 39  # below this faiss warns that the clustering is poor
TRAINING_CAP = 100_000  # training sample for indexes that train without centroids (PCA, ...)


# -- GPU selection (pure functions over a faiss module, so that tests can pass a fake one) --------------------
class GpuFaiss(Protocol):
    """The faiss GPU API that embedkit calls: the faiss module itself, or a fake one in tests that reports GPUs.

    ``get_num_gpus`` is not part of it: faiss-cpu builds lack it, so :func:`gpu_count` looks it up.
    """

    def GpuMultipleClonerOptions(self) -> faiss.GpuMultipleClonerOptions: ...

    def GpuParameterSpace(self) -> faiss.ParameterSpace: ...

    def index_cpu_to_all_gpus(
        self, index: faiss.Index, co: faiss.GpuClonerOptions | None = None, ngpu: int = -1
    ) -> faiss.Index: ...


def gpu_count(faiss_module: GpuFaiss) -> int:
    """GPUs the installed faiss can use: ``faiss.get_num_gpus()``, 0 for faiss-cpu builds that lack it."""
    get_num_gpus = getattr(faiss_module, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


def search_device(num_gpus: int, device: str, k: int, nprobe: int | None = None) -> str:
    """``"gpu"`` or ``"cpu"``: where one search of ``k`` results (probing ``nprobe`` lists) runs.

    ``device`` is ``"auto"`` (the GPU when there is one), ``"gpu"`` or ``"cpu"``. A search beyond faiss's GPU
    limit of :data:`GPU_MAX_K` results or probes goes to the CPU index, which has no such limit.
    """
    if device == "cpu" or num_gpus < 1:
        return "cpu"
    if k > GPU_MAX_K or (nprobe or 0) > GPU_MAX_K:
        return "cpu"
    return "gpu"


def clone_to_gpus(faiss_module: GpuFaiss, index: faiss.Index, num_gpus: int) -> faiss.Index:
    """A GPU copy of the CPU ``index`` on all ``num_gpus`` GPUs: sharded (each GPU holds a slice of the
    vectors, faiss merges the results) when there are several, so that an index larger than one GPU fits."""
    options = faiss_module.GpuMultipleClonerOptions()
    options.shard = num_gpus > 1
    return faiss_module.index_cpu_to_all_gpus(index, co=options, ngpu=num_gpus)


# -- training ------------------------------------------------------------------------------------------------
def _components(index: faiss.Index) -> Iterator[faiss.Index]:
    """``index`` and every index nested in it (pre-transforms, id maps, HNSW storage, refine bases)."""
    index = faiss.downcast_index(index)
    yield index
    for attribute in ("index", "storage", "base_index"):
        nested = getattr(index, attribute, None)
        if isinstance(nested, faiss.Index):
            yield from _components(nested)


def _clusterings(index: faiss.Index) -> Iterator[tuple[str, int, faiss.ClusteringParameters]]:
    """``(what, centroids, clustering parameters)`` of every k-means the index trains."""
    for component in _components(index):
        if isinstance(component, faiss.IndexIVF):
            yield "IVF lists", int(component.nlist), component.cp
        pq = getattr(component, "pq", None)
        if isinstance(pq, faiss.ProductQuantizer):
            yield "PQ centroids per sub-quantizer", int(pq.ksub), pq.cp


def training_size(index: faiss.Index, n: int, factory: str) -> int:
    """How many of ``n`` corpus vectors to train ``index`` on; 0 when it needs no training.

    Raises:
        ConfigError: fewer vectors than some k-means has centroids (faiss cannot train); says how many documents
            the spec needs and what to use instead.

    Warns:
        IndexWarning: fewer than 39 vectors per centroid, faiss's threshold for a usable clustering.
    """
    if index.is_trained:
        return 0
    clusterings = list(_clusterings(index))
    if not clusterings:
        return min(n, TRAINING_CAP)
    return clustering_sample_size(clusterings, n, factory)


def clustering_sample_size(clusterings: list[tuple[str, int, faiss.ClusteringParameters]], n: int, factory: str) -> int:
    """How many of ``n`` corpus vectors to train the k-means ``(what, centroids, parameters)`` of ``faiss:factory``
    on (float or binary indexes alike); raises and warns as :func:`training_size`."""
    what, centroids, _ = max(clusterings, key=lambda item: item[1])
    needs = (
        f"faiss:{factory} trains {centroids} {what}, so it needs at least {centroids:,} documents "
        f"({MIN_POINTS_PER_CENTROID * centroids:,} for good clusters, {MIN_POINTS_PER_CENTROID} per centroid)"
    )
    if n < centroids:
        raise ConfigError(f"{needs}, but the corpus has {n:,}; {_smaller_spec(what, factory, n)}")
    if n < MIN_POINTS_PER_CENTROID * centroids:
        warnings.warn(
            f"{needs}, and the corpus has {n:,}: the clusters will be poor and recall low; "
            f"{_smaller_spec(what, factory, n)}",
            IndexWarning,
            stacklevel=4,
        )
        for _, _, parameters in clusterings:
            parameters.min_points_per_centroid = 0  # faiss would print the same warning once per k-means
    return min(n, MAX_POINTS_PER_CENTROID * centroids)


def _smaller_spec(what: str, factory: str, n: int) -> str:
    """What to use instead of a ``factory`` whose k-means (``what``) has too many centroids for ``n`` vectors."""
    lists = n // MIN_POINTS_PER_CENTROID
    # a binary factory (BIVF) falls back on binary codes searched exhaustively
    untrained = "'faiss:BFlat', which needs" if factory.startswith("B") else "'faiss:HNSW32' or 'faiss:Flat', which need"
    no_training = f"or {untrained} no training"
    if what == "IVF lists" and lists >= 1:
        smaller = re.sub(r"IVF\d+", f"IVF{lists}", factory, count=1)
        return f"use at most n / {MIN_POINTS_PER_CENTROID} = {lists:,} lists ('faiss:{smaller}'), {no_training}"
    if what == "IVF lists":
        return f"the corpus is too small for IVF lists; use {untrained} no training"
    return f"use fewer bits per code (e.g. PQ16x4 trains 16 centroids per sub-quantizer), {no_training}"


# -- the backend ---------------------------------------------------------------------------------------------
def _faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _stores_ids(index: faiss.Index) -> bool:
    """Whether ``add_with_ids`` works as is: IVF indexes (also behind a transform) and explicit id maps."""
    return faiss.try_extract_index_ivf(index) is not None or isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2)


def _faiss_message(error: Exception) -> str:
    """The useful last line of a faiss C++ exception (the first names the source file)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _structure(index: faiss.Index) -> str:
    """The classes of a faiss index and of the indexes inside it, with the IVF list count, e.g.
    ``IndexIDMap2(IndexHNSWFlat)`` or ``IndexPreTransform(IndexIVFPQ(nlist=256))``."""
    index = faiss.downcast_index(index)
    name = type(index).__name__
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
        return f"{name}({_structure(index.index)})"
    if isinstance(index, faiss.IndexIVF):
        return f"{name}(nlist={index.nlist})"
    return name


def _check_structure(path: Path, index: faiss.Index, spec: IndexSpec, dim: int, metric: str) -> None:
    """Refuse a faiss file whose index is not what the manifest's spec builds (an edited spec would otherwise load
    under a false name, and search with parameters meant for another index).

    Raises:
        IndexFileError: names the file, the spec and both structures.
    """
    factory = spec.options or DEFAULT_FACTORY
    try:
        expected = faiss.index_factory(dim, factory, _faiss_metric(metric))
    except RuntimeError:
        expected = None
    if expected is not None:
        if not _stores_ids(expected):
            expected = faiss.IndexIDMap2(expected)
        # through faiss's writer and reader, which pick the classes a loaded file has (IndexFlat -> IndexFlatIP)
        expected = faiss.deserialize_index(faiss.serialize_index(expected))
    if expected is None or _structure(expected) != _structure(index):
        built = "nothing faiss can build" if expected is None else _structure(expected)
        raise IndexFileError(
            f"{path}: the file holds {_structure(index)}, but the manifest's spec {str(spec)!r} builds {built}; "
            "the manifest does not describe this index"
        )


class FaissBackend:
    """A faiss index with int64 ids, searched on the GPU when one is there and the search fits its limits.

    Args:
        spec: ``faiss:<factory string>``.
        dim: vector dimension.
        metric: ``"ip"`` or ``"l2"``.
        device: ``"auto"``, ``"gpu"`` or ``"cpu"``.
        index: the CPU index (already holding ids).
        faiss_module: the faiss module; tests pass a fake one to exercise the GPU paths on a CPU.
    """

    FILES: ClassVar[tuple[str, ...]] = (INDEX_FILE,)

    def __init__(
        self, spec: IndexSpec, dim: int, metric: str, device: str, index: faiss.Index, faiss_module: GpuFaiss = faiss
    ) -> None:
        self.spec = spec
        self.factory = spec.options or DEFAULT_FACTORY
        self.dim = dim
        self.metric = metric
        self.device = device
        self.index = index
        self.faiss = faiss_module
        self.search_params: dict[str, float] = {}
        self._gpu_index: faiss.Index | None = None
        self._gpu_failed = False
        if device == "gpu" and gpu_count(faiss_module) < 1:
            raise ConfigError(
                "device 'gpu' was asked for, but the installed faiss sees no GPU (faiss-cpu, or no CUDA device); "
                "use device 'auto' or 'cpu', or 'torch:cuda' for exact search on a CUDA device"
            )

    @classmethod
    def create(
        cls, spec: IndexSpec, dim: int, metric: str, device: str, faiss_module: GpuFaiss = faiss
    ) -> FaissBackend:
        factory = spec.options or DEFAULT_FACTORY
        try:
            index = faiss.index_factory(dim, factory, _faiss_metric(metric))
        except RuntimeError as error:
            raise ConfigError(
                f"faiss cannot build {factory!r} for dimension {dim} and metric {metric}: {_faiss_message(error)} "
                "(see https://github.com/facebookresearch/faiss/wiki/The-index-factory)"
            ) from None
        if not _stores_ids(index):
            index = faiss.IndexIDMap2(index)
        return cls(spec, dim, metric, device, index, faiss_module)

    @classmethod
    def load(cls, folder: Path, spec: IndexSpec, dim: int, metric: str, device: str) -> FaissBackend:
        path = folder / INDEX_FILE
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise IndexFileError(f"{path}: not a readable faiss index ({_faiss_message(error)})") from None
        if index.d != dim or index.metric_type != _faiss_metric(metric) or not _stores_ids(index):
            raise IndexFileError(
                f"{path}: the faiss index does not match the manifest (dimension {index.d}, not {dim})"
            )
        _check_structure(path, index, spec, dim, metric)
        return cls(spec, dim, metric, device, index)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def needs_training(self) -> bool:
        return not self.index.is_trained

    def training_size(self, n: int) -> int:
        return training_size(self.index, n, self.factory)

    def _num_gpus(self) -> int:
        return 0 if self.device == "cpu" else gpu_count(self.faiss)

    def train(self, vectors: np.ndarray) -> None:
        num_gpus = self._num_gpus()
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None and num_gpus > 0:
            # k-means assignment is the cost of IVF training; faiss runs it on the GPU through clustering_index
            flat = faiss.IndexFlat(ivf.d, ivf.quantizer.metric_type)
            ivf.clustering_index = clone_to_gpus(self.faiss, flat, num_gpus)
        try:
            self.index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        except RuntimeError as error:
            raise ConfigError(f"faiss cannot train {self.factory!r}: {_faiss_message(error)}") from None
        self._gpu_index = None

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)
        )
        self._gpu_index = None

    def remove(self, ids: np.ndarray) -> int:
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
        try:
            removed = int(self.index.remove_ids(selector))
        except RuntimeError:
            removed = self._rebuild_without(np.asarray(ids, dtype=np.int64))
        self._gpu_index = None
        return removed

    def _rebuild_without(self, ids: np.ndarray) -> int:
        """Remove from an index that cannot remove (HNSW): re-add every other vector to an empty copy.

        The copy keeps the trained parts (codebooks) and the graph parameters; reconstruction is exact for
        flat storage, so the vectors are the same and only the graph is rebuilt.
        """
        if not isinstance(self.index, faiss.IndexIDMap):  # IVF and flat-code indexes remove on their own
            raise ConfigError(f"faiss {self.factory!r} cannot remove vectors; rebuild the index without these ids")
        inner = faiss.downcast_index(self.index.index)
        current = faiss.vector_to_array(self.index.id_map)
        keep = ~np.isin(current, ids)
        try:
            vectors = inner.reconstruct_n(0, inner.ntotal)
        except RuntimeError as error:
            raise ConfigError(
                f"faiss {self.factory!r} can neither remove vectors nor reconstruct them ({_faiss_message(error)}); "
                "rebuild the index without these ids"
            ) from None
        fresh = faiss.clone_index(inner)
        fresh.reset()
        rebuilt = faiss.IndexIDMap2(fresh)
        rebuilt.add_with_ids(vectors[keep], current[keep])
        self.index = rebuilt  # the clone kept the search parameters set on the old index
        return int((~keep).sum())

    def _searcher(self, k: int) -> faiss.Index:
        """The index to search for ``k`` results: the GPU copy when the search fits the GPU, else the CPU one."""
        nprobe = self.search_params.get("nprobe")
        where = search_device(self._num_gpus(), self.device, k, None if nprobe is None else int(nprobe))
        if where == "cpu" or self._gpu_failed:
            return self.index
        if self._gpu_index is None:
            try:
                self._gpu_index = clone_to_gpus(self.faiss, self.index, self._num_gpus())
            except RuntimeError as error:  # e.g. HNSW, which faiss has no GPU version of
                self._gpu_failed = True
                warnings.warn(
                    f"faiss cannot put {self.factory!r} on the GPU ({_faiss_message(error)}); searching on the CPU",
                    IndexWarning,
                    stacklevel=3,
                )
                return self.index
            self._apply_params(self.faiss.GpuParameterSpace(), self._gpu_index)
        return self._gpu_index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self._searcher(k).search(aligned(queries), k)
        scores[ids < 0] = pad_score(self.metric)  # faiss pads with -1 ids and +-FLT_MAX
        return scores, ids

    def _apply_params(self, space: faiss.ParameterSpace, index: faiss.Index) -> None:
        for name, value in self.search_params.items():
            try:
                space.set_index_parameter(index, name, value)
            except RuntimeError as error:
                raise ConfigError(
                    f"faiss {self.factory!r} has no search parameter {name!r} (IVF: nprobe; HNSW: efSearch): "
                    f"{_faiss_message(error)}"
                ) from None

    def set_search_params(self, params: dict[str, float]) -> None:
        previous = self.search_params
        self.search_params = {**previous, **params}
        try:
            self._apply_params(faiss.ParameterSpace(), self.index)
        except ConfigError:
            self.search_params = previous
            raise
        self._gpu_index = None  # recloned with the new parameters on the next search

    def to_bytes(self) -> np.ndarray:
        """The CPU index serialised (uint8), to send to other processes."""
        return faiss.serialize_index(self.index)

    def load_bytes(self, data: np.ndarray) -> None:
        """Replace the index by one serialised with :meth:`to_bytes`."""
        self.index = faiss.deserialize_index(data)
        self._gpu_index = None

    @property
    def mergeable(self) -> bool:
        """Whether shards of this index built apart can be merged (faiss ``merge_from``): IVF indexes and flat-code
        indexes (Flat, PQ, SQ) can; graphs (HNSW) cannot."""
        return isinstance(self._inner(), faiss.IndexIVF | faiss.IndexFlatCodes)

    def merge(self, shard: np.ndarray) -> None:
        """Move the vectors of a shard (serialised with :meth:`to_bytes`, trained like this index) into this index,
        keeping their ids."""
        self.index.merge_from(faiss.deserialize_index(shard), 0)
        self._gpu_index = None

    def save(self, folder: Path) -> list[str]:
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        return [INDEX_FILE]

    def _inner(self) -> faiss.Index:
        """The index inside the id map, or the index itself when it stores ids on its own (IVF)."""
        if isinstance(self.index, faiss.IndexIDMap | faiss.IndexIDMap2):
            return faiss.downcast_index(self.index.index)
        return self.index

    def describe(self) -> dict[str, JsonValue]:
        inner = self._inner()
        ivf = faiss.try_extract_index_ivf(self.index)
        info: dict[str, JsonValue] = {
            "backend": "faiss",
            "factory": self.factory,
            "faiss_class": type(inner).__name__,
            "ntotal": len(self),
            "is_trained": bool(self.index.is_trained),
            "device": self.device,
            "gpus": self._num_gpus(),
            "search_params": dict(self.search_params),
        }
        if ivf is not None:
            info["nlist"] = int(ivf.nlist)
        return info
