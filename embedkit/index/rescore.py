"""Rescoring: the top ``k * r`` candidates of a quantized index, scored again with vectors kept beside it.

Binary or int8 codes rank a corpus cheaply but coarsely; the order of the best few comes back when the ``k * r``
best candidates are scored again with float32 vectors, or int8 ones (4x smaller, still far finer than one bit).
This is the retrieve-and-rescore scheme of Shakir, Aarsen and Lee, "Binary and Scalar Embedding Quantization for
Significantly Faster & Cheaper Retrieval" (Hugging Face blog, 2024), and the re-ranking of Jégou et al.,
"Searching in one billion vectors: re-rank with source coding" (ICASSP 2011) that faiss's ``IndexRefine`` does in
memory. Here the vectors stay on disk: ``rescore.safetensors`` in the index folder holds

    ids       [n] int64, the backend's internal ids, ascending
    vectors   [n, D] float32, or int8 codes
    ranges    [2, D] float32 (int8 only): each dimension's min and max, the calibration of the codes

A loaded index memory-maps ``vectors``: only the ids (8 bytes a vector) are read into memory, and a search reads
the rows of its candidates. Adds and removes go to a private working file in the temporary folder (the payloads'
working folder, :func:`~embedkit.index.store.working_folder`), so that neither building nor changing an index
holds all its vectors in memory; a save streams them into the new version.

int8 codes are sentence-transformers' ``quantize_embeddings(x, precision="int8", ranges=ranges)``: each
dimension's ``[min, max]`` over the training sample (at most 100,000 vectors of the first add) is cut into 256
steps, ``code = clip(floor((x - min) / step), 0, 255) - 128``; later vectors outside the ranges are clipped.
Rescoring decodes a code to the middle of its step.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import warnings
import weakref
from pathlib import Path
from typing import BinaryIO

import numpy as np
from safetensors import SafetensorError, safe_open

from embedkit.errors import ConfigError
from embedkit.index.faiss_backend import TRAINING_CAP
from embedkit.index.spec import Backend, IndexFileError, IndexWarning, pad_score
from embedkit.index.store import working_folder
from embedkit.types import JsonValue

RESCORE_FILE = "rescore.safetensors"
RESCORE_DTYPES = ("float32", "int8")
MIN_CALIBRATION = 100  # below this many vectors the int8 ranges are unreliable (sentence-transformers warns too)
ROWS_FILE = "rescore.rows"  # the working file: the rows, raw, in id order
BLOCK_ROWS = 65536  # rows copied at a time when streaming the vectors between files
RESCORE_ROWS = 16384  # candidate rows gathered at a time by a search (25 MiB at 384 float32 dimensions)
_SAFETENSORS_DTYPES = {np.dtype(np.int64): "I64", np.dtype(np.float32): "F32", np.dtype(np.int8): "I8"}


# -- int8 codes ----------------------------------------------------------------------------------------------
def int8_ranges(vectors: np.ndarray) -> np.ndarray:
    """``[2, D]`` float32: the per-dimension min and max of ``[n, D]`` vectors (the ``ranges`` of
    ``quantize_embeddings``)."""
    return np.vstack((vectors.min(axis=0), vectors.max(axis=0))).astype(np.float32)


def _steps(ranges: np.ndarray) -> np.ndarray:
    steps = (ranges[1] - ranges[0]) / 255
    return np.where(steps == 0, 1, steps)  # a constant dimension: every value gets code -128


def quantize_int8(vectors: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """``[n, D]`` float32 -> ``[n, D]`` int8 codes, equal to ``quantize_embeddings(vectors, "int8", ranges=ranges)``."""
    codes = np.clip(np.floor((np.asarray(vectors, dtype=np.float32) - ranges[0]) / _steps(ranges)), 0, 255)
    return (codes - 128).astype(np.int8)


def dequantize_int8(codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """``[n, D]`` int8 codes -> ``[n, D]`` float32, the middle of each code's step."""
    decoded = codes.astype(np.float32)
    decoded += 128.5  # in place: a search decodes k * r rows per query
    decoded *= _steps(ranges)
    decoded += ranges[0]
    return decoded


# -- the file ------------------------------------------------------------------------------------------------
def _write_rows(file: BinaryIO, rows: np.ndarray, keep: np.ndarray | None = None) -> None:
    """Write ``rows`` (``[n, ...]``, perhaps memory-mapped; only those where ``keep``) raw, a block at a time."""
    for start in range(0, len(rows), BLOCK_ROWS):
        block = rows[start : start + BLOCK_ROWS]
        if keep is not None:
            block = block[keep[start : start + BLOCK_ROWS]]
        file.write(np.ascontiguousarray(block).data)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write ``tensors`` and string ``metadata`` as a safetensors file, streaming each tensor
    (``safetensors.numpy.save_file`` would first copy every tensor into one bytes object, all the vectors at once)."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, array in tensors.items():
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header so that the data starts 8-byte aligned
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(text)) + text)
        for array in tensors.values():
            _write_rows(file, array)


def _data_offset(path: Path, name: str) -> int:
    """The byte offset in ``path`` of tensor ``name``'s data (the file was checked by ``safe_open`` already)."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    return 8 + length + int(header[name]["data_offsets"][0])


def _remove_working_folder(workdir: Path, lock: int) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    os.close(lock)


class RescoreVectors:
    """``[n, D]`` float32 vectors or int8 codes under ascending int64 ids, memory-mapped from a file.

    Args:
        dim: the dimension ``D``.
        dtype: ``"float32"`` or ``"int8"``.
        ranges: ``[2, D]`` int8 calibration; ``None`` until :meth:`calibrate` (float32: always ``None``).

    Attributes:
        calibration_size: how many vectors :meth:`calibrate` took the int8 ranges from.
    """

    def __init__(self, dim: int, dtype: str, ranges: np.ndarray | None = None) -> None:
        self.dim = dim
        self.dtype = dtype
        self.ranges = ranges
        self.calibration_size = 0
        self.ids = np.zeros(0, dtype=np.int64)
        self._path: Path | None = None  # the file holding the rows (a saved version's, or the working file)
        self._offset = 0
        self._workdir: Path | None = None
        self._view: np.ndarray | None = None

    @property
    def _np_dtype(self) -> np.dtype:
        return np.dtype(np.int8 if self.dtype == "int8" else np.float32)

    @classmethod
    def load(cls, folder: Path, dim: int, dtype: str) -> RescoreVectors:
        """The vectors of a saved version, memory-mapped.

        Raises:
            IndexFileError: a missing or unreadable file, or tensors that are not what ``dim`` and ``dtype`` say.
        """
        path = folder / RESCORE_FILE
        expected = {"ids", "vectors"} | ({"ranges"} if dtype == "int8" else set())
        try:
            with safe_open(str(path), framework="numpy") as file:
                names = set(file.keys())
                if names != expected:
                    raise IndexFileError(
                        f"{path}: holds the tensors {sorted(names)}, not {sorted(expected)} ({dtype} rescoring)"
                    )
                ids = file.get_tensor("ids")
                calibration_size = (file.metadata() or {}).get("calibration_vectors", "0")
                ranges = file.get_tensor("ranges") if dtype == "int8" else None
                vectors = file.get_slice("vectors")
                shape, stored = vectors.get_shape(), vectors.get_dtype()
        except (SafetensorError, OSError) as error:
            raise IndexFileError(f"{path}: not a readable safetensors file ({error})") from None
        store = cls(dim, dtype, ranges)
        if (
            ids.dtype != np.int64
            or ids.ndim != 1
            or shape != [len(ids), dim]
            or stored != _SAFETENSORS_DTYPES[store._np_dtype]
            or (ranges is not None and (ranges.dtype != np.float32 or ranges.shape != (2, dim)))
        ):
            raise IndexFileError(
                f"{path}: expected ids [n] int64, vectors [n, {dim}] {dtype}"
                + (f" and ranges [2, {dim}] float32" if dtype == "int8" else "")
                + f"; it holds vectors {shape} {stored}"
            )
        if np.any(np.diff(ids) <= 0):
            raise IndexFileError(f"{path}: the ids are not in ascending order")
        store.ids = ids
        store.calibration_size = int(calibration_size) if calibration_size.isdigit() else 0
        store._path, store._offset = path, _data_offset(path, "vectors")
        store._rows()  # mapped now, while the version is held: a writer may remove its folder once it is loaded
        return store

    def __len__(self) -> int:
        return len(self.ids)

    # -- calibration -------------------------------------------------------------------------------------------
    @property
    def needs_calibration(self) -> bool:
        return self.dtype == "int8" and self.ranges is None

    def calibration_sample_size(self, n: int) -> int:
        """How many of ``n`` corpus vectors to calibrate the int8 ranges on (0: none needed)."""
        return min(n, TRAINING_CAP) if self.needs_calibration else 0

    def calibrate(self, sample: np.ndarray) -> None:
        """Set the int8 ranges from ``[s, D]`` vectors.

        Warns:
            IndexWarning: fewer than 100 vectors, whose ranges will clip many later vectors.
        """
        if len(sample) < MIN_CALIBRATION:
            warnings.warn(
                f"int8 rescoring vectors are calibrated on the first add, here {len(sample)} vectors (fewer than "
                f"{MIN_CALIBRATION}): later vectors outside their ranges are clipped; build from more documents, or "
                "use rescore_dtype=float32",
                IndexWarning,
                stacklevel=4,
            )
        self.ranges = int8_ranges(sample)
        self.calibration_size = len(sample)

    # -- rows --------------------------------------------------------------------------------------------------
    def _rows(self) -> np.ndarray:
        """``[n, D]`` rows (codes for int8), memory-mapped."""
        if self._view is None:
            if self._path is None or not len(self.ids):
                self._view = np.zeros((0, self.dim), dtype=self._np_dtype)
            else:
                self._view = np.memmap(
                    self._path, dtype=self._np_dtype, mode="r", offset=self._offset, shape=(len(self.ids), self.dim)
                )
        return self._view

    def _rewrite(self, keep: np.ndarray | None = None) -> Path:
        """Copy the rows (those where ``keep``) to a new working file, which then holds them; returns its path."""
        if self._workdir is None:
            workdir, lock = working_folder()
            weakref.finalize(self, _remove_working_folder, workdir, lock)
            self._workdir = workdir
        target = self._workdir / ROWS_FILE
        partial = target.with_suffix(".partial")
        with open(partial, "wb") as file:
            _write_rows(file, self._rows(), keep)
        os.replace(partial, target)  # an open memory map keeps reading the file it mapped
        if keep is not None:
            self.ids = self.ids[keep]
        self._path, self._offset, self._view = target, 0, None
        return target

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Append ``[m, D]`` float32 vectors under ``[m]`` ids above every id held (internal ids only grow)."""
        ids = np.asarray(ids, dtype=np.int64)
        if np.any(np.diff(ids) <= 0) or (len(ids) and len(self.ids) and ids[0] <= self.ids[-1]):
            raise ValueError("rescoring vectors are added in ascending id order, above the ids already held")
        if self.dtype == "int8":
            if self.ranges is None:
                raise ConfigError("int8 rescoring vectors must be calibrated before the first add")
            rows = quantize_int8(vectors, self.ranges)
        else:
            rows = np.ascontiguousarray(vectors, dtype=np.float32)
        path = self._rewrite() if self._workdir is None else self._workdir / ROWS_FILE
        with open(path, "ab") as file:
            file.write(rows.data)
        self.ids = np.concatenate([self.ids, ids])
        self._view = None

    def remove(self, ids: np.ndarray) -> None:
        keep = ~np.isin(self.ids, ids)
        if not keep.all():
            self._rewrite(keep)

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """``[m]`` ids -> ``[m, D]`` float32 vectors (int8 codes decoded), read from the memory map.

        Raises:
            IndexFileError: an id that the vectors lack: the index's files disagree.
        """
        positions = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        missing = ids[self.ids[positions] != ids] if len(self.ids) else ids
        if len(missing):
            raise IndexFileError(
                f"the rescoring vectors lack {len(missing)} ids that the index returned (e.g. internal id "
                f"{int(missing[0])}): the index's files disagree; build the index again"
            )
        rows = self._rows()[positions]
        return dequantize_int8(rows, self.ranges) if self.ranges is not None else np.asarray(rows)

    def save(self, folder: Path) -> list[str]:
        tensors = {"ids": self.ids, "vectors": self._rows()}
        metadata = {"dtype": self.dtype}
        if self.ranges is not None:
            tensors["ranges"] = self.ranges
            metadata["calibration_vectors"] = str(self.calibration_size)
        write_safetensors(folder / RESCORE_FILE, tensors, metadata)
        return [RESCORE_FILE]

    def record(self) -> dict[str, JsonValue]:
        """What the manifest records about the vectors."""
        record: dict[str, JsonValue] = {
            "dtype": self.dtype,
            "file": RESCORE_FILE,
            "bytes_per_vector": self.dim * self._np_dtype.itemsize,
        }
        if self.ranges is not None:
            calibration: dict[str, JsonValue] = {
                "rule": "per-dimension [min, max] of the training sample, 256 steps: "
                "quantize_embeddings(x, precision='int8', ranges=ranges)",
                "vectors": self.calibration_size,
                "ranges": self.ranges.tolist(),
            }
            record["calibration"] = calibration
        return record


# -- the backend ---------------------------------------------------------------------------------------------
class RescoringBackend:
    """A backend whose ``k * factor`` best candidates are scored again with :class:`RescoreVectors`.

    Args:
        inner: the quantized backend (binary codes, SQ8, PQ) that finds the candidates.
        vectors: the vectors that rescore them, under the same ids.
        factor: ``r``: candidates per result; the ``rescore`` search parameter changes it.
    """

    def __init__(self, inner: Backend, vectors: RescoreVectors, factor: int) -> None:
        self.inner = inner
        self.vectors = vectors
        self.factor = factor
        self.dim = inner.dim
        self.metric = inner.metric

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def needs_training(self) -> bool:
        return self.inner.needs_training or self.vectors.needs_calibration

    def training_size(self, n: int) -> int:
        return max(self.inner.training_size(n), self.vectors.calibration_sample_size(n))

    def train(self, vectors: np.ndarray) -> None:
        """Train the index (k-means subsample what they need) and calibrate int8 vectors on one sample."""
        if self.inner.needs_training:
            self.inner.train(vectors)
        if self.vectors.needs_calibration:
            self.vectors.calibrate(vectors)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.inner.add(vectors, ids)
        self.vectors.add(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        removed = self.inner.remove(ids)
        self.vectors.remove(ids)
        return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The inner index's ``k * factor`` best of each query, rescored: ``([n, k] float32, [n, k] int64)``."""
        candidates = k * self.factor
        _, found = self.inner.search(queries, candidates)
        queries = np.asarray(queries, dtype=np.float32)
        block = max(1, RESCORE_ROWS // candidates)
        parts = [self._best(queries[s : s + block], found[s : s + block], k) for s in range(0, len(queries), block)]
        if not parts:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate([s for s, _ in parts]), np.concatenate([i for _, i in parts])

    def _best(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``[q, D]`` queries and ``[q, m]`` candidate ids (``-1``: none) -> the best ``k`` by exact score."""
        valid = candidates >= 0
        if not valid.any():
            return np.full((len(queries), k), pad_score(self.metric), np.float32), candidates[:, :k]
        filled = np.where(valid, candidates, candidates[valid][0])  # any real id in the empty slots, masked below
        vectors = self.vectors.gather(filled.ravel()).reshape(*candidates.shape, self.dim)
        scores = np.matmul(vectors, queries[:, :, None])[..., 0]  # [q, m] inner products
        if self.metric == "l2":  # |v - q|^2 = |v|^2 - 2 v.q + |q|^2
            squared = np.einsum("qmd,qmd->qm", vectors, vectors) + np.einsum("qd,qd->q", queries, queries)[:, None]
            scores = np.maximum(squared - 2 * scores, 0)
        scores[~valid] = pad_score(self.metric)
        order = np.argsort(scores if self.metric == "l2" else -scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(candidates, order, axis=1)

    def set_search_params(self, params: dict[str, float]) -> None:
        """``rescore`` (candidates per result) here; every other parameter goes to the inner index."""
        factor = params.get("rescore", self.factor)
        if int(factor) != factor or factor < 1:
            raise ConfigError(f"rescore must be a whole number of candidates per result, at least 1, got {factor}")
        others = {name: value for name, value in params.items() if name != "rescore"}
        if others:
            self.inner.set_search_params(others)
        self.factor = int(factor)

    def save(self, folder: Path) -> list[str]:
        return self.inner.save(folder) + self.vectors.save(folder)

    def describe(self) -> dict[str, JsonValue]:
        return {**self.inner.describe(), "rescore": self.factor, "rescore_dtype": self.vectors.dtype}
