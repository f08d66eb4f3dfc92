"""The ``faiss`` backend's spec: a faiss factory string, float or binary, and optional rescoring.

::

    faiss:<factory>[,rescore=<r>[,rescore_dtype=float32|int8]]

    faiss:SQ8                                    int8 scalar quantization (faiss's own calibration, in index.faiss)
    faiss:IVF256,SQ8,rescore=4                   its best 4k candidates rescored with float32 vectors
    faiss:BFlat                                  binary codes (sign bits), exhaustive Hamming search
    faiss:BIVF256,rescore=4,rescore_dtype=int8   binary IVF, rescored with int8 vectors

The factory is faiss's: float indexes by ``faiss.index_factory`` (:class:`~embedkit.index.faiss_backend.FaissBackend`),
binary ones, whose names start with ``B``, by ``faiss.index_binary_factory`` (:class:`~embedkit.index.binary.
BinaryBackend`). ``rescore=<r>`` keeps the vectors beside the index and scores its best ``k * r`` candidates again
(:mod:`embedkit.index.rescore`). :class:`FaissFactory` is the ``faiss`` entry of the backend registry, and
:func:`quantization_record` what the manifest says about the codes and their calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss

from embedkit.errors import ConfigError
from embedkit.index.binary import BinaryBackend, is_binary_factory
from embedkit.index.faiss_backend import DEFAULT_FACTORY, INDEX_FILE, FaissBackend, _components
from embedkit.index.rescore import RESCORE_DTYPES, RescoreVectors, RescoringBackend
from embedkit.index.spec import BACKENDS, Backend, IndexSpec
from embedkit.types import JsonValue

FORMS = (
    "faiss:<factory>[,rescore=<r>[,rescore_dtype=float32|int8]], e.g. faiss:SQ8, faiss:IVF256,SQ8,rescore=4, "
    "faiss:BFlat,rescore=4, faiss:BIVF256,rescore=4,rescore_dtype=int8"
)
OPTIONS = ("rescore", "rescore_dtype")


@dataclass(frozen=True)
class FaissOptions:
    """A parsed ``faiss:`` spec: the factory string, and the rescoring factor and vector type (``None``: none)."""

    factory: str
    rescore: int | None = None
    rescore_dtype: str = "float32"


def parse_faiss_options(spec: IndexSpec) -> FaissOptions:
    """``faiss:BIVF256,rescore=4`` -> ``FaissOptions("BIVF256", 4)``: the options are the ``name=value`` parts after
    the factory string.

    Raises:
        ConfigError: an unknown, repeated or invalid option, or options without a factory; lists the valid forms.
    """
    parts = [part.strip() for part in (spec.options or DEFAULT_FACTORY).split(",")]
    options: dict[str, str] = {}
    while parts and "=" in parts[-1]:
        name, _, value = parts.pop().partition("=")
        if name.strip() not in OPTIONS or name.strip() in options:
            what = "repeats" if name.strip() in options else "has an unknown option"
            raise ConfigError(f"index spec {str(spec)!r} {what} {name.strip()!r}; valid: {FORMS}")
        options[name.strip()] = value.strip()
    factory = ",".join(parts)
    if not factory or "=" in factory:
        raise ConfigError(f"index spec {str(spec)!r}: name the faiss index first, then the options; valid: {FORMS}")
    rescore = options.get("rescore")
    dtype = options.get("rescore_dtype", "float32")
    if rescore is not None and (not rescore.isdigit() or int(rescore) < 1):
        raise ConfigError(
            f"index spec {str(spec)!r}: rescore takes a whole number of candidates per result, at least 1, got "
            f"{rescore!r}; valid: {FORMS}"
        )
    if dtype not in RESCORE_DTYPES or (rescore is None and "rescore_dtype" in options):
        raise ConfigError(
            f"index spec {str(spec)!r}: rescore_dtype is float32 or int8, and needs rescore=<r>; valid: {FORMS}"
        )
    return FaissOptions(factory, None if rescore is None else int(rescore), dtype)


class FaissFactory:
    """The ``faiss`` backend: a :class:`FaissBackend` or a :class:`BinaryBackend`, wrapped in a
    :class:`RescoringBackend` when the spec asks for rescoring."""

    FILES: tuple[str, ...] = (INDEX_FILE,)

    def create(self, spec: IndexSpec, dim: int, metric: str, device: str) -> Backend:
        options = parse_faiss_options(spec)
        inner: Backend
        if is_binary_factory(options.factory):
            inner = BinaryBackend.create(options.factory, dim, metric, device)
        else:
            inner = FaissBackend.create(IndexSpec("faiss", options.factory), dim, metric, device)
        if options.rescore is None:
            return inner
        return RescoringBackend(inner, RescoreVectors(dim, options.rescore_dtype), options.rescore)

    def load(self, folder: Path, spec: IndexSpec, dim: int, metric: str, device: str) -> Backend:
        options = parse_faiss_options(spec)
        inner: Backend
        if is_binary_factory(options.factory):
            inner = BinaryBackend.load(folder, options.factory, dim, metric, device)
        else:
            inner = FaissBackend.load(folder, IndexSpec("faiss", options.factory), dim, metric, device)
        if options.rescore is None:
            return inner
        return RescoringBackend(inner, RescoreVectors.load(folder, dim, options.rescore_dtype), options.rescore)


BACKENDS.register("faiss", FaissFactory())


def quantization_record(backend: Backend) -> dict[str, JsonValue]:
    """What the manifest records about a backend's codes (``{}``: none, the vectors are kept as they are):
    scalar (SQ) or product (PQ) quantization by faiss, whose calibration is trained into ``index.faiss``; binary
    codes and their thresholding rule; and the rescoring vectors with their int8 ranges."""
    if isinstance(backend, RescoringBackend):
        return {**quantization_record(backend.inner), "rescore": {"factor": backend.factor, **backend.vectors.record()}}
    if isinstance(backend, BinaryBackend):
        return backend.quantization()
    if isinstance(backend, FaissBackend):
        return _faiss_codes(backend.index)
    return {}


def _enum_names(prefix: str) -> dict[int, str]:
    """``{value: name}`` of faiss.ScalarQuantizer's constants that start with ``prefix`` (``QT_``, ``RS_``)."""
    return {
        getattr(faiss.ScalarQuantizer, name): name for name in dir(faiss.ScalarQuantizer) if name.startswith(prefix)
    }


def _faiss_codes(index: faiss.Index) -> dict[str, JsonValue]:
    for component in _components(index):
        sq = getattr(component, "sq", None)
        if isinstance(sq, faiss.ScalarQuantizer):
            qtype = _enum_names("QT_")[sq.qtype]
            return {
                "codes": "scalar",
                "faiss_class": type(component).__name__,
                "qtype": qtype,
                "code_bytes": int(sq.code_size),
                "calibration": {
                    "rule": f"{'one range for all dimensions' if 'uniform' in qtype else 'a range per dimension'}, "
                    f"from the training sample by faiss ({_enum_names('RS_')[sq.rangestat]})",
                    "trained": bool(component.is_trained),
                    "stored_in": INDEX_FILE,
                },
            }
        pq = getattr(component, "pq", None)
        if isinstance(pq, faiss.ProductQuantizer):
            return {
                "codes": "product",
                "faiss_class": type(component).__name__,
                "sub_quantizers": int(pq.M),
                "bits_per_code": int(pq.nbits),
                "code_bytes": int(pq.code_size),
                "calibration": {
                    "rule": "k-means codebooks of the training sample",
                    "trained": bool(component.is_trained),
                    "stored_in": INDEX_FILE,
                },
            }
    return {}
