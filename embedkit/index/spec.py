"""Index specs, metrics, the backend registry and the errors of the index package.

An index is named by a spec string (DESIGN.md, principle 4): ``torch`` or ``torch:cuda`` for exact search
with PyTorch, ``faiss:<factory string>`` for any faiss index (``faiss:Flat``, ``faiss:IVF1024,Flat``,
``faiss:HNSW32``, ``faiss:IVF4096,PQ64``). :func:`parse_spec` splits the string at the first colon; the
backend named before it is looked up in :data:`BACKENDS`, and the rest is that backend's options.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from embedkit.errors import ConfigError, EmbedkitError
from embedkit.registry import Registry
from embedkit.types import JsonValue

METRICS = ("cosine", "ip", "l2")
"""``cosine``: inner product of L2-normalised vectors; ``ip``: raw inner product; ``l2``: squared Euclidean
distance (smaller is closer; scores are distances, in ascending order)."""

DEVICES = ("auto", "cpu", "gpu")

DEFAULT_TARGET_RECALL = 0.95
"""The recall@10 against exact search that :func:`~embedkit.index.build_index` tunes an approximate index's search
parameter for by default (:mod:`embedkit.index.tuning`; here, where the CLI reads it without loading faiss)."""


class IndexFileError(EmbedkitError):
    """An index folder that is missing, incomplete, corrupt or truncated."""


class IndexConflictError(EmbedkitError):
    """A save that would drop another writer's change: the index folder changed after this index was loaded."""


class IndexMismatchError(EmbedkitError):
    """An encoder or query vectors that do not fit the index: another model or another dimension."""


class IndexWarning(UserWarning):
    """Something that works but is probably not what the user wants (e.g. too little data to train an IVF)."""


@dataclass(frozen=True)
class IndexSpec:
    """A parsed spec string: ``backend`` and its ``options`` (``""`` when none were given)."""

    backend: str
    options: str = ""

    def __str__(self) -> str:
        return f"{self.backend}:{self.options}" if self.options else self.backend


class Backend(Protocol):
    """Vectors under ``int64`` internal ids; the :class:`~embedkit.index.Index` maps them to external ids.

    A backend sees vectors that are already normalised when the metric needs it, and a metric of ``"ip"`` or
    ``"l2"`` (cosine is ``"ip"`` on normalised vectors). Search results are padded with id ``-1`` and a score
    of ``-inf`` (``ip``) or ``+inf`` (``l2``) where fewer than ``k`` vectors exist.
    """

    dim: int
    metric: str

    def __len__(self) -> int: ...

    @property
    def needs_training(self) -> bool: ...

    def training_size(self, n: int) -> int:
        """How many of ``n`` corpus vectors to train on (0: no training needed)."""
        ...

    def train(self, vectors: np.ndarray) -> None:
        """Train on ``[s, D]`` float32 vectors."""
        ...

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add ``[n, D]`` float32 vectors under ``[n]`` int64 ids."""
        ...

    def remove(self, ids: np.ndarray) -> int:
        """Remove the vectors of ``[m]`` int64 ids; returns how many were removed."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``[n, D]`` queries -> ``(scores [n, k] float32, ids [n, k] int64)``, best first."""
        ...

    def set_search_params(self, params: dict[str, float]) -> None: ...

    def save(self, folder: Path) -> list[str]:
        """Write the backend's files into ``folder``; returns their names."""
        ...

    def describe(self) -> dict[str, JsonValue]:
        """What ``Index.info()`` shows about the backend."""
        ...


@runtime_checkable
class TextBackend(Backend, Protocol):
    """A backend that also indexes the documents' texts (``bm25``, ``hybrid``).

    The :class:`~embedkit.index.Index` hands it every stored document after each add or remove
    (:meth:`index_texts`), and searches it with the query texts (:meth:`search_texts`) instead of :meth:`search`.
    Its scores are its own (BM25, fused), not similarities of the model's embeddings.
    """

    embeds: bool
    """Whether documents and queries are also embedded (``hybrid``) or not at all (``bm25``): a backend that
    embeds nothing gets no :meth:`add` calls and no query vectors."""

    def index_texts(self, ids: np.ndarray, texts: Sequence[str]) -> None:
        """(Re)build the text index over exactly these documents: ``[n]`` int64 ids and their texts."""
        ...

    def search_texts(
        self, texts: Sequence[str], vectors: np.ndarray | None, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``[n]`` query texts (and their ``[n, D]`` vectors when it embeds) -> ``(scores [n, k], ids [n, k])``."""
        ...


class BackendFactory(Protocol):
    FILES: tuple[str, ...]
    """The files that :meth:`Backend.save` writes and :meth:`load` reads (the manifest must check each)."""

    def create(self, spec: IndexSpec, dim: int, metric: str, device: str) -> Backend: ...

    def load(self, folder: Path, spec: IndexSpec, dim: int, metric: str, device: str) -> Backend: ...


BACKENDS: Registry[BackendFactory] = Registry("index backend")
# Each backend registers itself when its module is imported, which a lookup does: loading a faiss index does not
# import torch, nor a torch index faiss.
BACKENDS.register_module("torch", "embedkit.index.exact")
BACKENDS.register_module("faiss", "embedkit.index.quantized")
BACKENDS.register_module("bm25", "embedkit.index.bm25")
BACKENDS.register_module("hybrid", "embedkit.index.hybrid")


def parse_spec(spec: str | IndexSpec) -> IndexSpec:
    """``"faiss:IVF1024,Flat"`` -> ``IndexSpec("faiss", "IVF1024,Flat")``.

    Raises:
        UnknownNameError: the backend is not registered; the message lists the valid backends.
        ConfigError: the spec is empty.
    """
    if isinstance(spec, IndexSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"an index spec must be a non-empty string such as 'torch' or 'faiss:HNSW32', got {spec!r}")
    backend, _, options = spec.strip().partition(":")
    BACKENDS.get(backend)  # an unknown backend fails here, listing the valid ones
    return IndexSpec(backend, options.strip())


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    return metric


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ConfigError(f"unknown index device {device!r}; valid: {', '.join(DEVICES)}")
    return device


def backend_metric(metric: str) -> str:
    """The metric a backend computes for a user metric: cosine is inner product on normalised vectors."""
    return "l2" if check_metric(metric) == "l2" else "ip"


def pad_score(metric: str) -> float:
    """The score of an empty result slot: worse than any real score."""
    return float("inf") if metric == "l2" else float("-inf")


def needs_encoder(spec: str | IndexSpec) -> bool:
    """Whether indexes of ``spec`` embed documents and queries with an encoder: all but purely lexical ones (``bm25``).

    Raises:
        UnknownNameError: the backend is not registered.
    """
    return getattr(BACKENDS.get(parse_spec(spec).backend), "embeds", True)  # vector backends do not declare it


def parse_options(spec: str | IndexSpec, text: str, valid: Sequence[str]) -> dict[str, str]:
    """``"k1=0.9,b=0.4"`` -> ``{"k1": "0.9", "b": "0.4"}``: the ``name=value`` options of a spec.

    Raises:
        ConfigError: an item that is not ``name=value``, a name not in ``valid`` (the message lists them), or a
            name given twice; each message names the spec.
    """
    options: dict[str, str] = {}
    for item in text.split(",") if text.strip() else []:
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not name or not value:
            raise ConfigError(f"index spec {str(spec)!r}: options look like name=value, got {item.strip()!r}")
        if name not in valid:
            raise ConfigError(f"index spec {str(spec)!r}: unknown option {name!r}; valid: {', '.join(valid)}")
        if name in options:
            raise ConfigError(f"index spec {str(spec)!r}: option {name!r} is given twice")
        options[name] = value
    return options


def number_option(
    spec: str | IndexSpec, name: str, value: str, *, low: float, high: float = float("inf"), integer: bool = False
) -> float:
    """The option ``name=value`` of a spec as a number in ``[low, high]`` (an integer when ``integer``).

    Raises:
        ConfigError: not a number, not an integer when one is needed, or out of range; names the spec.
    """
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        number = float("nan")
    if not low <= number <= high:  # NaN fails too
        kind = "an integer" if integer else "a number"
        bounds = f">= {low:g}" if high == float("inf") else f"in [{low:g}, {high:g}]"
        raise ConfigError(f"index spec {str(spec)!r}: option {name} must be {kind} {bounds}, got {value!r}")
    return number
