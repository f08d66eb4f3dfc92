"""Exact search with PyTorch (backend ``torch`` / ``torch:cuda``): chunked matmul and a streaming top-k merge.

The full ``queries x corpus`` score matrix never exists: each block of at most ``query_chunk_size`` queries is
scored against ``chunk_size`` corpus rows at a time, each block keeps its own top ``k``, and that is merged
with the best ``k`` so far. Memory per step is ``query_chunk_size * chunk_size`` floats, whatever the corpus
size, and the result equals a brute-force search (up to the order of equal scores).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from embedkit.errors import ConfigError
from embedkit.fsutil import follow_umask
from embedkit.index.spec import BACKENDS, IndexFileError, IndexSpec, pad_score
from embedkit.types import JsonValue

CHUNK_SIZE = 32768
"""Corpus rows scored at once; with :data:`QUERY_CHUNK_SIZE` queries that is a 128 MiB float32 block."""
QUERY_CHUNK_SIZE = 1024
VECTORS_FILE = "vectors.safetensors"
SEARCH_PARAMS = ("chunk_size", "query_chunk_size")


def exact_search(
    queries: np.ndarray | Tensor,
    corpus: np.ndarray | Tensor,
    k: int,
    *,
    metric: str = "ip",
    chunk_size: int = CHUNK_SIZE,
    query_chunk_size: int = QUERY_CHUNK_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ``k`` corpus rows of each query, like ``faiss.knn`` (``D, I``).

    Computes on the device of ``corpus`` when it is a tensor (so a CUDA tensor searches on the GPU).

    Args:
        queries: ``[q, D]`` float vectors.
        corpus: ``[n, D]`` float vectors.
        k: results per query; rows past the corpus size are padded with index ``-1``.
        metric: ``"ip"`` (highest inner product first) or ``"l2"`` (smallest squared distance first).
        chunk_size: corpus rows scored at once.
        query_chunk_size: queries scored at once.

    Returns:
        ``scores`` ``[q, k]`` float32 (padding ``-inf`` for ip, ``+inf`` for l2) and ``indices`` ``[q, k]``
        int64 row numbers of ``corpus``.
    """
    corpus_t = torch.as_tensor(corpus, dtype=torch.float32)
    queries_t = torch.as_tensor(queries, dtype=torch.float32).to(corpus_t.device)
    scores, positions = search_tensors(queries_t, corpus_t, k, metric, chunk_size, query_chunk_size)
    return scores.cpu().numpy(), positions.cpu().numpy()


def search_tensors(
    queries: Tensor,
    corpus: Tensor,
    k: int,
    metric: str,
    chunk_size: int = CHUNK_SIZE,
    query_chunk_size: int = QUERY_CHUNK_SIZE,
    corpus_sq_norms: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`exact_search` on tensors of one device: ``[q, D] x [n, D] -> ([q, k] float32, [q, k] int64)``.

    ``corpus_sq_norms`` ``[n]`` (l2 only) saves recomputing the squared norms of the corpus on every call.
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if chunk_size < 1 or query_chunk_size < 1:
        raise ConfigError(f"chunk sizes must be at least 1, got {chunk_size} and {query_chunk_size}")
    if metric == "l2" and corpus_sq_norms is None:
        corpus_sq_norms = corpus.pow(2).sum(1)
    # one score buffer for every block: a fresh 128 MiB tensor per block costs page faults (16% of a CPU search)
    buffer = torch.empty(min(query_chunk_size, len(queries)) * min(chunk_size, len(corpus)), device=corpus.device)
    parts = [
        _search_block(queries[start : start + query_chunk_size], corpus, k, metric, chunk_size, corpus_sq_norms, buffer)
        for start in range(0, queries.shape[0], query_chunk_size)
    ]
    if not parts:
        empty = torch.empty((0, k), device=corpus.device)
        return empty, empty.long()
    return torch.cat([s for s, _ in parts]), torch.cat([p for _, p in parts])


def _search_block(
    queries: Tensor,
    corpus: Tensor,
    k: int,
    metric: str,
    chunk_size: int,
    corpus_sq_norms: Tensor | None,
    buffer: Tensor,
) -> tuple[Tensor, Tensor]:
    """One block of queries against the corpus, chunk by chunk, keeping the running best ``k``; the scores of
    each chunk go to ``buffer`` (at least ``queries x chunk_size`` floats)."""
    largest = metric != "l2"
    best_scores = torch.full((queries.shape[0], k), pad_score(metric), device=corpus.device)
    best_positions = torch.full((queries.shape[0], k), -1, dtype=torch.long, device=corpus.device)
    query_sq_norms = queries.pow(2).sum(1, keepdim=True) if metric == "l2" else None
    for start in range(0, corpus.shape[0], chunk_size):
        block = corpus[start : start + chunk_size]
        scores = torch.mm(queries, block.T, out=buffer[: len(queries) * len(block)].view(len(queries), len(block)))
        if query_sq_norms is not None and corpus_sq_norms is not None:
            # |q - c|^2 = |q|^2 - 2 q.c + |c|^2, in place: the block is the largest tensor here
            scores.mul_(-2).add_(query_sq_norms).add_(corpus_sq_norms[start : start + chunk_size]).clamp_(min=0)
        top_scores, top_positions = scores.topk(min(k, block.shape[0]), dim=1, largest=largest)
        merged_scores = torch.cat([best_scores, top_scores], dim=1)
        merged_positions = torch.cat([best_positions, top_positions + start], dim=1)
        best_scores, order = merged_scores.topk(k, dim=1, largest=largest)
        best_positions = merged_positions.gather(1, order)
    return best_scores, best_positions


def torch_device(spec: IndexSpec, device: str) -> torch.device:
    """The device of a ``torch`` spec: its option (``torch:cuda``, ``torch:cuda:1``), else CUDA only when
    ``device="gpu"`` asks for it; plain ``torch`` stays on the CPU."""
    name = spec.options or ("cuda" if device == "gpu" else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"index spec {str(spec)!r}: {name!r} is not a torch device (try torch, torch:cuda)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"index spec {str(spec)!r} asks for CUDA, but torch sees no CUDA device; use 'torch'")
    return resolved


class TorchBackend:
    """Exact search over vectors kept in one tensor (on the CPU or a CUDA device).

    Added vectors are kept as a list of blocks and joined once, on the next search or save, so that adding a
    corpus chunk by chunk copies it once rather than once per chunk.
    """

    FILES: ClassVar[tuple[str, ...]] = (VECTORS_FILE,)

    def __init__(self, spec: IndexSpec, dim: int, metric: str, device: torch.device) -> None:
        self.spec = spec
        self.dim = dim
        self.metric = metric
        self.device = device
        self.chunk_size = CHUNK_SIZE
        self.query_chunk_size = QUERY_CHUNK_SIZE
        self._vectors: list[Tensor] = []
        self._ids: list[Tensor] = []
        self._sq_norms: Tensor | None = None

    @classmethod
    def create(cls, spec: IndexSpec, dim: int, metric: str, device: str) -> TorchBackend:
        return cls(spec, dim, metric, torch_device(spec, device))

    @classmethod
    def load(cls, folder: Path, spec: IndexSpec, dim: int, metric: str, device: str) -> TorchBackend:
        backend = cls.create(spec, dim, metric, device)
        path = folder / VECTORS_FILE
        try:
            tensors = load_file(str(path), device=str(backend.device))
        except (SafetensorError, OSError, ValueError) as error:
            raise IndexFileError(f"{path}: not a readable safetensors file ({error})") from None
        vectors, ids = tensors.get("vectors"), tensors.get("ids")
        if (
            vectors is None
            or ids is None
            or vectors.ndim != 2
            or vectors.shape[1] != dim
            or ids.shape != (len(vectors),)
        ):
            raise IndexFileError(f"{path}: expected 'vectors' [n, {dim}] and 'ids' [n]; the file holds other tensors")
        backend._vectors, backend._ids = [vectors.float()], [ids.long()]
        return backend

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._ids)

    @property
    def needs_training(self) -> bool:
        return False

    def training_size(self, n: int) -> int:
        return 0

    def train(self, vectors: np.ndarray) -> None:
        raise ConfigError("exact torch search needs no training")

    def _joined(self) -> tuple[Tensor, Tensor]:
        """``([n, D] vectors, [n] ids)``, the blocks joined into one tensor each."""
        if len(self._vectors) != 1:
            vectors = torch.cat(self._vectors) if self._vectors else torch.empty((0, self.dim), device=self.device)
            ids = torch.cat(self._ids) if self._ids else torch.empty(0, dtype=torch.long, device=self.device)
            self._vectors, self._ids = [vectors], [ids]
        return self._vectors[0], self._ids[0]

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self._vectors.append(torch.as_tensor(vectors, dtype=torch.float32).to(self.device))
        self._ids.append(torch.as_tensor(ids, dtype=torch.long).to(self.device))
        self._sq_norms = None

    def remove(self, ids: np.ndarray) -> int:
        vectors, current = self._joined()
        keep = ~torch.isin(current, torch.as_tensor(ids, dtype=torch.long, device=self.device))
        self._vectors, self._ids = [vectors[keep]], [current[keep]]
        self._sq_norms = None
        return int((~keep).sum())

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        vectors, ids = self._joined()
        if self.metric == "l2" and self._sq_norms is None:
            self._sq_norms = vectors.pow(2).sum(1)
        scores, positions = search_tensors(
            torch.as_tensor(queries, dtype=torch.float32).to(self.device),
            vectors,
            k,
            self.metric,
            self.chunk_size,
            self.query_chunk_size,
            self._sq_norms,
        )
        # position -1 (padding) must stay -1, not become the id of the last row
        found = ids[positions.clamp(min=0)].masked_fill(positions < 0, -1)
        return scores.cpu().numpy(), found.cpu().numpy()

    def set_search_params(self, params: dict[str, float]) -> None:
        unknown = sorted(set(params) - set(SEARCH_PARAMS))
        if unknown:
            raise ConfigError(
                f"exact torch search has no parameter {', '.join(unknown)}; valid: {', '.join(SEARCH_PARAMS)}"
            )
        for name, value in params.items():
            if int(value) < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
            setattr(self, name, int(value))

    def save(self, folder: Path) -> list[str]:
        vectors, ids = self._joined()
        save_file({"vectors": vectors.contiguous().cpu(), "ids": ids.contiguous().cpu()}, str(folder / VECTORS_FILE))
        follow_umask(folder / VECTORS_FILE)
        return [VECTORS_FILE]

    def describe(self) -> dict[str, JsonValue]:
        return {
            "backend": "torch",
            "device": str(self.device),
            "ntotal": len(self),
            "chunk_size": self.chunk_size,
            "query_chunk_size": self.query_chunk_size,
        }


BACKENDS.register("torch", TorchBackend)
