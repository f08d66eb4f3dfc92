"""The ``hybrid`` backend: a dense index and BM25 over the same documents, searched together and fused.

The spec is ``hybrid:[options:]<dense spec>``::

    hybrid:faiss:Flat                                   reciprocal rank fusion, rrf_k=60
    hybrid:torch
    hybrid:fusion=convex,alpha=0.3:faiss:HNSW32         0.3 * dense + 0.7 * BM25, min-max normalised
    hybrid:fusion=convex,norm=zscore,depth=200:torch

Options (before the dense spec, which may hold commas of its own):

- ``fusion``: ``rrf`` (default; Cormack et al., 2009) or ``convex`` (Bruch et al., 2023); see
  :mod:`embedkit.index.fusion`.
- ``rrf_k`` (rrf): the rank constant, default 60.
- ``alpha`` (convex): the weight of the dense scores in ``[0, 1]``, default 0.5; BM25 gets ``1 - alpha``.
- ``norm`` (convex): ``minmax`` (default) or ``zscore``.
- ``depth``: candidates each retriever returns before fusing, default 100 (at least ``k``): a document ranked
  low by both retrievers can still fuse into the top ``k``, so both look deeper than ``k``.

The lexical side is the ``bm25`` backend with its defaults (:mod:`embedkit.index.bm25`); adding and removing
documents rebuilds it from the stored texts, as there. Search parameters (``nprobe``, ``efSearch``, ...) go to
the dense index. The scores a search returns are the fused ones, not similarities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from embedkit.errors import ConfigError
from embedkit.index.bm25 import BM25Backend
from embedkit.index.fusion import NORMALIZATIONS, RRF_K, convex_fusion, reciprocal_rank_fusion
from embedkit.index.spec import (
    BACKENDS,
    Backend,
    IndexFileError,
    IndexSpec,
    needs_encoder,
    number_option,
    parse_options,
    parse_spec,
)
from embedkit.index.store import MANIFEST_FILE, Manifest, check_listed
from embedkit.types import JsonValue

FUSIONS = ("rrf", "convex")
DEPTH = 100
ALPHA = 0.5
OPTIONS = ("fusion", "rrf_k", "alpha", "norm", "depth")
EXAMPLE = "hybrid:faiss:Flat or hybrid:fusion=convex,alpha=0.5:torch"


@dataclass(frozen=True)
class Fusion:
    """How a hybrid index fuses its dense and lexical results (see the module docs)."""

    method: str = "rrf"
    rrf_k: float = RRF_K
    alpha: float = ALPHA
    normalization: str = "minmax"
    depth: int = DEPTH

    def fuse(
        self, dense: tuple[np.ndarray, np.ndarray], lexical: tuple[np.ndarray, np.ndarray], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of each retriever, ``[n, m]`` each -> the fused ``(scores [n, k], ids [n, k])``."""
        if self.method == "rrf":
            return reciprocal_rank_fusion([dense[1], lexical[1]], k, rrf_k=self.rrf_k)
        return convex_fusion(
            [dense[0], lexical[0]], [dense[1], lexical[1]], [self.alpha, 1 - self.alpha], k,
            normalization=self.normalization,
        )

    def describe(self) -> dict[str, JsonValue]:
        if self.method == "rrf":
            return {"fusion": "rrf", "rrf_k": self.rrf_k, "depth": self.depth}
        return {"fusion": "convex", "alpha": self.alpha, "norm": self.normalization, "depth": self.depth}


def parse_hybrid(spec: IndexSpec) -> tuple[Fusion, IndexSpec]:
    """``hybrid:fusion=convex,alpha=0.3:faiss:Flat`` -> ``(Fusion("convex", alpha=0.3), IndexSpec("faiss", "Flat"))``.

    Raises:
        ConfigError: no dense spec, a dense spec that embeds nothing or is itself hybrid, an unknown option or
            value, or an option of the other fusion (``alpha`` with ``rrf``, ``rrf_k`` with ``convex``).
        UnknownNameError: the dense backend is not registered.
    """
    head, _, rest = spec.options.partition(":")
    text, dense_text = (head, rest) if "=" in head else ("", spec.options)
    if not dense_text.strip():
        raise ConfigError(f"index spec {str(spec)!r} names no dense index to fuse with BM25; e.g. {EXAMPLE}")
    dense = parse_spec(dense_text)
    if dense.backend == "hybrid" or not needs_encoder(dense):
        raise ConfigError(f"index spec {str(spec)!r}: the dense part must embed (torch or faiss:...), not {dense}")
    options = parse_options(spec, text, OPTIONS)
    method = options.get("fusion", "rrf")
    if method not in FUSIONS:
        raise ConfigError(f"index spec {str(spec)!r}: unknown fusion {method!r}; valid: {', '.join(FUSIONS)}")
    foreign = [name for name in (("alpha", "norm") if method == "rrf" else ("rrf_k",)) if name in options]
    if foreign:
        raise ConfigError(f"index spec {str(spec)!r}: option {foreign[0]} does not apply to fusion={method}")
    normalization = options.get("norm", "minmax")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(
            f"index spec {str(spec)!r}: unknown norm {normalization!r}; valid: {', '.join(NORMALIZATIONS)}"
        )
    fusion = Fusion(
        method=method,
        rrf_k=number_option(spec, "rrf_k", options["rrf_k"], low=1e-9) if "rrf_k" in options else RRF_K,
        alpha=number_option(spec, "alpha", options["alpha"], low=0, high=1) if "alpha" in options else ALPHA,
        normalization=normalization,
        depth=int(number_option(spec, "depth", options["depth"], low=1, integer=True)) if "depth" in options else DEPTH,
    )
    return fusion, dense


class HybridBackend:
    """A dense backend and a :class:`~embedkit.index.bm25.BM25Backend` under the same internal ids, fused at search.

    Args:
        spec: the ``hybrid:...`` spec.
        fusion: how results are fused.
        dense: the dense backend (``torch`` or ``faiss``).
        lexical: the BM25 backend.
    """

    FILES: ClassVar[tuple[str, ...]] = BM25Backend.FILES
    """The lexical side's files; the dense side's depend on its spec and are checked by :meth:`load`."""
    embeds: ClassVar[bool] = True

    def __init__(self, spec: IndexSpec, fusion: Fusion, dense: Backend, lexical: BM25Backend) -> None:
        self.spec = spec
        self.fusion = fusion
        self.dense = dense
        self.lexical = lexical
        self.dim = dense.dim
        self.metric = dense.metric

    @classmethod
    def create(cls, spec: IndexSpec, dim: int, metric: str, device: str) -> HybridBackend:
        fusion, dense_spec = parse_hybrid(spec)
        if metric == "l2":
            raise ConfigError(f"index spec {str(spec)!r} fuses similarities; use metric cosine or ip, not l2")
        dense = BACKENDS.get(dense_spec.backend).create(dense_spec, dim, metric, device)
        return cls(spec, fusion, dense, BM25Backend.create(IndexSpec("bm25"), 0, metric, device))

    @classmethod
    def load(cls, folder: Path, spec: IndexSpec, dim: int, metric: str, device: str) -> HybridBackend:
        fusion, dense_spec = parse_hybrid(spec)
        factory = BACKENDS.get(dense_spec.backend)
        # the Index checked the manifest against FILES, which cannot name the dense side's files: check those here,
        # so that no file is read that the manifest does not vouch for
        path = folder / MANIFEST_FILE
        check_listed(Manifest.from_json(path.read_text(encoding="utf-8"), str(path)), path, factory.FILES)
        dense = factory.load(folder, dense_spec, dim, metric, device)
        lexical = BM25Backend.load(folder, IndexSpec("bm25"), 0, metric, device)
        if len(dense) != len(lexical):
            raise IndexFileError(
                f"{folder}: the dense index holds {len(dense)} documents but the BM25 index {len(lexical)}"
            )
        return cls(spec, fusion, dense, lexical)

    def __len__(self) -> int:
        return len(self.dense)

    @property
    def needs_training(self) -> bool:
        return self.dense.needs_training

    def training_size(self, n: int) -> int:
        return self.dense.training_size(n)

    def train(self, vectors: np.ndarray) -> None:
        self.dense.train(vectors)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors to the dense side; the lexical side follows in :meth:`index_texts`."""
        self.dense.add(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove vectors from the dense side; the lexical side follows in :meth:`index_texts`."""
        return self.dense.remove(ids)

    def index_texts(self, ids: np.ndarray, texts: Sequence[str]) -> None:
        self.lexical.index_texts(ids, texts)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise ConfigError("a hybrid index searches texts and their vectors together: give the query texts")

    def search_texts(self, texts: Sequence[str], vectors: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``[n]`` query texts and their ``[n, D]`` vectors -> the fused ``(scores [n, k], ids [n, k])``."""
        if vectors is None or len(vectors) != len(texts):
            raise ConfigError("a hybrid index needs each query's text and its vector")
        depth = max(k, self.fusion.depth)
        dense = self.dense.search(vectors, depth)
        lexical = self.lexical.search_texts(texts, None, depth)
        return self.fusion.fuse(dense, lexical, k)

    def set_search_params(self, params: dict[str, float]) -> None:
        self.dense.set_search_params(params)

    def save(self, folder: Path) -> list[str]:
        return [*self.dense.save(folder), *self.lexical.save(folder)]

    def describe(self) -> dict[str, JsonValue]:
        return {
            "backend": "hybrid",
            **self.fusion.describe(),
            "dense": self.dense.describe(),
            "lexical": self.lexical.describe(),
        }


BACKENDS.register("hybrid", HybridBackend)
