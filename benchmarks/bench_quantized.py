"""Quantized indexes: memory per vector, queries per second and recall@10 against exact float32 search, for
float32, int8 and binary codes with and without rescoring; embedkit, raw faiss and sentence-transformers side by
side in one run.

Data: synthetic 384-dimensional unit vectors (all-MiniLM-L6-v2's size), not encoded text: encoding 1M texts takes
hours on 2 cores, and the shared data has 22k sentences. They come from a two-level Gaussian mixture, as a corpus
has topics and, within them, groups of near-duplicates: ``n / 1000`` topics, ``n / 20`` subtopics around them, a
shared offset (real embeddings are anisotropic: they share a mean direction), per-dimension scales decaying as
``1 / sqrt(i + 1)`` (few dominant directions), and a fixed random rotation, so that no direction is an axis (sign
bits depend on the axes). The 1,000 queries are fresh draws from the same mixture. Ground truth: the exact top 10
by inner product (faiss ``IndexFlatIP``). Binary codes find these neighbours harder than they find those of
real embeddings, whose neighbourhoods are tighter, so read the binary rows as a lower bound.

For each size, families of indexes, each searched with k = 10 (rescoring with ``r`` candidates per result):

- exhaustive: float32 (faiss ``IndexFlatIP``; embedkit ``faiss:Flat``; sentence-transformers'
  ``semantic_search_faiss`` on that faiss index); int8 (faiss ``SQ8``; embedkit ``faiss:SQ8``;
  sentence-transformers ``quantize_embeddings(precision="uint8")`` + ``semantic_search_faiss``, which keeps the
  uint8 values in a float32 ``IndexFlatIP`` and so ranks by the inner product of codes that are all positive, not
  by their angle); int8 + float32 rescoring (faiss ``SQ8,RFlat`` with ``k_factor = r``,
  which keeps the float32 vectors in memory; embedkit ``faiss:SQ8,rescore=r``, which memory-maps them;
  sentence-transformers' rescoring of dequantized uint8 candidates); binary (faiss ``IndexBinaryFlat``; embedkit
  ``faiss:BFlat``; sentence-transformers ``precision="ubinary"``), binary + rescoring (faiss ``IndexBinaryFlat``
  plus numpy rescoring from float32 vectors in memory, what a faiss user writes; embedkit ``faiss:BFlat,rescore=r``
  with float32 and with int8 vectors; sentence-transformers' rescoring against the candidates' unpacked bits);
- IVF with ``--nprobe``: faiss ``IVF<nlist>,SQ8`` and ``IndexBinaryIVF``; embedkit ``faiss:IVF<nlist>,SQ8`` and
  ``faiss:BIVF<nlist>``, with and without rescoring.

Memory per vector (``ram_bytes_per_vector``): what the searched structure keeps in memory, from the size of the
faiss index written to disk (codes, ids, IVF lists; plus the float32 array of the raw binary rescoring, and
embedkit's rescoring ids, 8 bytes). embedkit's rescoring vectors are memory-mapped from the index folder (a search
reads its candidates' rows), so they count under ``disk_bytes_per_vector`` with the other files of the folder. Not
counted: embedkit's payload store (external ids, texts in SQLite), which every embedkit index has, and the hash map
from id to position of faiss's ``IndexIDMap2`` (embedkit's float indexes other than IVF), which faiss rebuilds on
load rather than writes. embedkit indexes
are built from the vectors (``build_index(..., embeddings=...)``), saved, loaded and then searched, as a user
would. Timings are the best of ``--repeats`` runs, the sides of a family taking turns, after a warm-up on a few
queries.

Usage::

    python benchmarks/bench_quantized.py --quick                  # smoke run, 20,000 vectors: numbers mean nothing
    python benchmarks/bench_quantized.py                          # 200,000 and 1,000,000 vectors
    python benchmarks/bench_quantized.py --sizes 200000 --output benchmarks/results/quantized_200k.json

Results: ``benchmarks/results/quantized.json`` and ``quantized.png`` (recall@10 against memory and against QPS).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # this script logs its own progress
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_index.py: torch's and faiss's OpenMP pools

import _common
import faiss
import numpy as np
import torch
from sentence_transformers.util.quantization import quantize_embeddings, semantic_search_faiss

from embedkit.index import Index, IndexWarning, build_index
from embedkit.index.arrays import aligned
from embedkit.index.binary import binarize
from embedkit.index.faiss_backend import MAX_POINTS_PER_CENTROID, TRAINING_CAP, training_size
from embedkit.index.index import training_positions
from embedkit.index.rescore import int8_ranges

DIM = 384
K = 10
TOPICS_PER = 1000  # vectors per topic
SUBTOPIC_SIZE = 20  # vectors per subtopic: groups of near-duplicates
WARMUP_QUERIES = 10
GENERATOR_SEED = 12345

log = _common.setup_logging("bench_quantized")


# -- data ------------------------------------------------------------------------------------------------------
class Mixture:
    """The two-level Gaussian mixture of the module docs, for a corpus of ``n`` vectors."""

    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(GENERATOR_SEED)
        self.scale = (1.0 + np.arange(DIM)) ** -0.5
        self.rotation = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].astype(np.float32)
        topics = rng.standard_normal((max(16, n // TOPICS_PER), DIM)) * self.scale
        subtopics = max(64, n // SUBTOPIC_SIZE)
        self.centres = topics[rng.integers(0, len(topics), subtopics)]
        self.centres += 0.7 * rng.standard_normal((subtopics, DIM)) * self.scale
        self.centres += 0.5 * rng.standard_normal(DIM) * self.scale  # the shared offset

    def sample(self, n: int, seed: int, block: int = 100_000) -> np.ndarray:
        """``[n, 384]`` unit float32 vectors."""
        rng = np.random.default_rng(seed)
        out = np.empty((n, DIM), dtype=np.float32)
        for start in range(0, n, block):
            rows = min(block, n - start)
            z = self.centres[rng.integers(0, len(self.centres), rows)]
            z = z + 0.5 * rng.standard_normal((rows, DIM)) * self.scale
            x = z.astype(np.float32) @ self.rotation.T
            out[start : start + rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


class VectorsOnly(torch.nn.Module):
    """The "model" of vectors that no model made: embedkit records the fingerprint of an index's model."""


class SyntheticEncoder:
    """A :class:`~embedkit.types.TextEncoder` for indexes built from given vectors; it encodes nothing."""

    name = "synthetic-384"
    precision = "fp32"
    model = VectorsOnly()
    dim = DIM
    max_seq_length = 0
    device = torch.device("cpu")
    prompts: Mapping[str, str] = MappingProxyType({})

    def encode(self, texts: Sequence[str], batch_size: int = 32, normalize: bool = False, show_progress=None, *,
               prompt=None):
        raise RuntimeError("this benchmark searches with vectors")


# -- measuring -------------------------------------------------------------------------------------------------
@dataclass
class Side:
    """One index searched in a family: who, what, its search function and the bytes per vector it keeps."""

    library: str
    what: str
    search: Callable[[np.ndarray], np.ndarray]  # [q, D] queries -> [q, K] ids
    build_seconds: float
    ram_bytes: float
    disk_bytes: dict[str, float] | None = None


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]))


def measure(family: str, sides: list[Side], queries: np.ndarray, truth: np.ndarray, repeats: int) -> list[dict]:
    """Warm each side up on a few queries, then time all of them in turns; the best time of each counts."""
    for side in sides:
        side.search(queries[:WARMUP_QUERIES])
    best: dict[int, tuple[np.ndarray, float]] = {}
    for _ in range(repeats):
        for number, side in enumerate(sides):
            found, seconds = timed(lambda side=side: side.search(queries))
            if number not in best or seconds < best[number][1]:
                best[number] = (found, seconds)
    rows = []
    for number, side in enumerate(sides):
        found, seconds = best[number]
        rows.append(
            {
                "family": family,
                "library": side.library,
                "what": side.what,
                "qps": round(len(queries) / seconds, 1),
                "recall_at_10": round(recall(found, truth), 4),
                "ram_bytes_per_vector": round(side.ram_bytes, 1),
                "disk_bytes_per_vector": side.disk_bytes,
                "build_seconds": round(side.build_seconds, 2),
            }
        )
        log(f"{family}: {side.library} {side.what}: {rows[-1]['qps']} q/s, recall@10 {rows[-1]['recall_at_10']}")
    return rows


def written_size(write: Callable[[str], None]) -> int:
    """Bytes of what ``write(path)`` writes (a faiss index streamed to a file, never held twice in memory)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "index")
        write(path)
        return os.path.getsize(path)


def described(what: str, params: dict[str, float]) -> str:
    return what + "".join(f" {name}={value}" for name, value in params.items())


# -- raw faiss -------------------------------------------------------------------------------------------------
def raw_float(factory: str, vectors: np.ndarray, seed: int, **params: float) -> Side:
    """What a faiss user writes: the factory, embedkit's seeded training sample, add, search parameters."""

    def build() -> faiss.Index:
        index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                size = training_size(index, len(vectors), factory)
            index.train(vectors[training_positions(len(vectors), size, seed)])
        index.add(vectors)
        for name, value in params.items():  # nprobe of IVF, k_factor of IndexRefineFlat
            setattr(faiss.downcast_index(index), name, value)
        return index

    index, seconds = timed(build)
    ram = written_size(lambda path: faiss.write_index(index, path)) / len(vectors)
    return Side("faiss", described(factory, params), lambda q: index.search(q, K)[1], seconds, ram)


def raw_binary(nlist: int | None, vectors: np.ndarray, seed: int, nprobe: int) -> tuple[Side, faiss.IndexBinary]:
    """``IndexBinaryFlat`` (``nlist`` None) or ``IndexBinaryIVF`` on the sign bits, trained on embedkit's sample."""

    def build() -> faiss.IndexBinary:
        if nlist is None:
            index = faiss.IndexBinaryFlat(DIM)
        else:
            index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(DIM), DIM, nlist)
            size = min(len(vectors), MAX_POINTS_PER_CENTROID * nlist)
            index.train(binarize(vectors[training_positions(len(vectors), size, seed)]))
            index.nprobe = nprobe
        index.add(binarize(vectors))
        return index

    index, seconds = timed(build)
    ram = written_size(lambda path: faiss.write_index_binary(index, path)) / len(vectors)
    what = "IndexBinaryFlat" if nlist is None else f"IndexBinaryIVF nlist={nlist} nprobe={nprobe}"
    return Side("faiss", what, lambda q: index.search(binarize(q), K)[1], seconds, ram), index


def raw_binary_rescored(binary: Side, index: faiss.IndexBinary, vectors: np.ndarray, factor: int) -> Side:
    """Binary candidates rescored in numpy from the float32 vectors in memory."""

    def search(queries: np.ndarray) -> np.ndarray:
        candidates = index.search(binarize(queries), K * factor)[1]
        scores = np.einsum("qd,qmd->qm", queries, vectors[candidates])
        return np.take_along_axis(candidates, np.argsort(-scores, axis=1)[:, :K], axis=1)

    what = f"{binary.what} + numpy rescoring r={factor}, float32 in memory"
    return Side("faiss", what, search, binary.build_seconds, binary.ram_bytes + DIM * 4)


# -- embedkit --------------------------------------------------------------------------------------------------
@dataclass
class Built:
    """An embedkit index built from the vectors, saved and loaded again (rescoring vectors memory-mapped)."""

    spec: str
    index: Index
    seconds: float
    files: dict[str, float]  # bytes per vector of each file of the saved folder


def embedkit_build(spec: str, vectors: np.ndarray, texts: list[str], folder: Path, seed: int) -> Built:
    encoder = SyntheticEncoder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IndexWarning)
        built, seconds = timed(
            # not tuned at build time: every side searches with the same --nprobe, set explicitly
            lambda: build_index(
                encoder, texts, spec, embeddings=vectors, seed=seed, show_progress=False, target_recall=None
            )
        )
    built.save(folder)
    del built
    index = Index.load(folder, encoder=encoder)
    files = {name: round(digest["bytes"] / len(vectors), 1) for name, digest in index.info()["files"].items()}
    return Built(spec, index, seconds, files)


def embedkit(built: Built, **params: float) -> Side:
    """A search of ``built`` with search parameters ``params`` (set before each search: sides share an index)."""

    def search(queries: np.ndarray) -> np.ndarray:
        if params:
            built.index.set_search_params(**params)
        return built.index.search(queries, K).ids

    ram = built.files["index.faiss"] + (8 if "rescore=" in built.spec else 0)  # + the rescoring ids
    spec = built.spec  # named by the factor it searches with, which the rescore parameter sets
    if "rescore" in params:
        spec = re.sub(r"rescore=\d+", f"rescore={int(params['rescore'])}", spec)
    others = {name: value for name, value in params.items() if name != "rescore"}
    return Side("embedkit", described(spec, others), search, built.seconds, ram, built.files)


# -- sentence-transformers -------------------------------------------------------------------------------------
def sentence_transformers(
    precision: str, index: faiss.Index | faiss.IndexBinary, ram: float, ranges: np.ndarray | None, factor: int | None
) -> Side:
    """``semantic_search_faiss`` on the faiss index it builds for ``precision`` (built once, passed in)."""

    def search(queries: np.ndarray) -> np.ndarray:
        results, _ = semantic_search_faiss(
            queries,
            corpus_index=index,
            corpus_precision=precision,
            top_k=K,
            ranges=ranges,
            rescore=factor is not None,
            rescore_multiplier=factor or 1,
        )
        return np.array([[hit["corpus_id"] for hit in hits] + [-1] * (K - len(hits)) for hits in results])

    what = "semantic_search_faiss" if precision == "float32" else f"quantize_embeddings({precision}) + search"
    return Side("sentence-transformers", what + (f", rescore r={factor}" if factor else ""), search, 0.0, ram)


# -- one size --------------------------------------------------------------------------------------------------
def float32_family(
    vectors: np.ndarray, queries: np.ndarray, build: Callable[[str], Built], repeats: int
) -> tuple[list[dict], np.ndarray, float]:
    """The exact searches: ``(rows, [q, K] true neighbours, bytes per vector of a flat float32 index)``."""
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors)
    truth = exact.search(queries, K)[1]
    flat_ram = written_size(lambda path: faiss.write_index(exact, path)) / len(vectors)
    sides = [
        Side("faiss", "IndexFlatIP", lambda q: exact.search(q, K)[1], 0.0, flat_ram),
        embedkit(build("faiss:Flat")),
        sentence_transformers("float32", exact, flat_ram, None, None),
    ]
    return measure("float32", sides, queries, truth, repeats), truth, flat_ram


def clear(work: Path) -> None:
    """Remove the saved indexes of a family: the disk holds one family's at a time (an index still loaded keeps
    reading the files it mapped until it is freed)."""
    for entry in work.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def run_size(n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    mixture = Mixture(n)
    vectors = aligned(mixture.sample(n, seed=1))
    queries = aligned(mixture.sample(args.queries, seed=2))
    texts = [f"document {i}" for i in range(n)]
    nlist = args.nlist or (256 if n <= 300_000 else 1024)
    r = args.rescore[0]
    log(f"{n} vectors ({vectors.nbytes / 2**20:.0f} MiB float32), {len(queries)} queries, nlist {nlist}")

    names = itertools.count()

    def build(spec: str) -> Built:
        return embedkit_build(spec, vectors, texts, work / f"{n}-{next(names)}", args.seed)

    rows, truth, flat_ram = float32_family(vectors, queries, build, args.repeats)
    clear(work)
    # sentence-transformers' uint8 index: the codes as float32 in an IndexFlatIP; ranges from embedkit's sample
    ranges = int8_ranges(vectors[training_positions(n, min(n, TRAINING_CAP), args.seed)])
    uint8 = faiss.IndexFlatIP(DIM)
    uint8.add(quantize_embeddings(vectors, precision="uint8", ranges=ranges).astype(np.float32))
    sq8_rescored = build(f"faiss:SQ8,rescore={r}")
    rows += measure(
        "int8",
        [
            raw_float("SQ8", vectors, args.seed),
            embedkit(build("faiss:SQ8")),
            sentence_transformers("uint8", uint8, flat_ram, ranges, None),
            raw_float("SQ8,RFlat", vectors, args.seed, k_factor=r),
            embedkit(sq8_rescored),
            sentence_transformers("uint8", uint8, flat_ram, ranges, r),
        ],
        queries,
        truth,
        args.repeats,
    )
    del uint8, sq8_rescored
    clear(work)

    binary, binary_index = raw_binary(None, vectors, args.seed, args.nprobe)
    float32_rescored, int8_rescored = (
        build(f"faiss:BFlat,rescore={r}"),
        build(f"faiss:BFlat,rescore={r},rescore_dtype=int8"),
    )
    sides = [
        binary,
        embedkit(build("faiss:BFlat")),
        sentence_transformers("ubinary", binary_index, binary.ram_bytes, None, None),
    ]
    for factor in args.rescore:
        sides += [
            raw_binary_rescored(binary, binary_index, vectors, factor),
            embedkit(float32_rescored, rescore=factor),
            embedkit(int8_rescored, rescore=factor),
            sentence_transformers("ubinary", binary_index, binary.ram_bytes, None, factor),
        ]
    rows += measure("binary", sides, queries, truth, args.repeats)
    del sides, binary_index, float32_rescored, int8_rescored
    clear(work)

    probe = {"nprobe": args.nprobe}
    rows += measure(
        "ivf",
        [
            raw_float(f"IVF{nlist},SQ8", vectors, args.seed, **probe),
            embedkit(build(f"faiss:IVF{nlist},SQ8"), **probe),
            embedkit(build(f"faiss:IVF{nlist},SQ8,rescore={r}"), **probe),
            raw_binary(nlist, vectors, args.seed, args.nprobe)[0],
            embedkit(build(f"faiss:BIVF{nlist}"), **probe),
            embedkit(build(f"faiss:BIVF{nlist},rescore={r}"), **probe),
            embedkit(build(f"faiss:BIVF{nlist},rescore={r},rescore_dtype=int8"), **probe),
        ],
        queries,
        truth,
        args.repeats,
    )
    clear(work)
    return {"vectors": n, "queries": len(queries), "nlist": nlist, "rows": rows, "summary": summary(rows)}


def summary(rows: list[dict]) -> dict[str, Any]:
    """embedkit's QPS over raw faiss's on the same index kind, and the recall that rescoring buys back."""

    def row(library: str, what: str) -> dict | None:
        return next((row for row in rows if row["library"] == library and row["what"] == what), None)

    out: dict[str, Any] = {}
    for name, raw, ours in [
        ("Flat", "IndexFlatIP", "faiss:Flat"),
        ("SQ8", "SQ8", "faiss:SQ8"),
        ("BFlat", "IndexBinaryFlat", "faiss:BFlat"),
    ]:
        found_raw, found_ours = row("faiss", raw), row("embedkit", ours)
        if found_raw and found_ours:
            out[f"embedkit_over_faiss_qps_{name}"] = round(found_ours["qps"] / found_raw["qps"], 3)
    binary = row("embedkit", "faiss:BFlat")
    rescored = [r for r in rows if r["library"] == "embedkit" and r["what"].startswith("faiss:BFlat,rescore=")]
    if binary and rescored:
        out["binary_recall"] = binary["recall_at_10"]
        out["binary_rescored_recall"] = {r["what"]: r["recall_at_10"] for r in rescored}
        out["binary_rescored_ram_over_float32"] = round(rescored[0]["ram_bytes_per_vector"] / (DIM * 4), 4)
    return out


# -- plot and main -----------------------------------------------------------------------------------------------
def plot(report: dict[str, Any], path: Path) -> None:
    """Recall@10 against memory per vector (top) and against QPS (bottom), one column per size: colour = family,
    marker = library, hollow = rescored."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = report["sizes"]
    figure, axes = plt.subplots(2, len(sizes), figsize=(7 * len(sizes), 10), squeeze=False)
    markers = {"faiss": "o", "embedkit": "s", "sentence-transformers": "^"}
    colours = {"float32": "black", "int8": "tab:blue", "binary": "tab:orange", "ivf": "tab:green"}
    for column, result in enumerate(sizes):
        for row in result["rows"]:
            rescored = "rescor" in row["what"] or "RFlat" in row["what"]
            colour = colours[row["family"]]
            for line, x in enumerate(("ram_bytes_per_vector", "qps")):
                axes[line][column].scatter(
                    row[x],
                    row["recall_at_10"],
                    marker=markers[row["library"]],
                    facecolors="none" if rescored else colour,
                    edgecolors=colour,
                )
        for line, label in enumerate(("memory per vector, bytes (log)", "queries per second (log)")):
            axis = axes[line][column]
            axis.set_xscale("log")
            axis.set_xlabel(label)
            axis.set_ylabel("recall@10 against exact float32")
            axis.set_title(f"{result['vectors']:,} synthetic vectors, 384 dims, k=10")
            axis.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker=m, ls="", color="gray", label=library) for library, m in markers.items()]
    handles += [plt.Line2D([], [], marker="o", ls="", color=c, label=family) for family, c in colours.items()]
    handles.append(plt.Line2D([], [], marker="o", ls="", color="gray", markerfacecolor="none", label="rescored"))
    axes[0][0].legend(handles=handles, fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="200000,1000000", help="corpus sizes (default 200000,1000000)")
    parser.add_argument("--queries", type=int, default=1000, help="queries per size (default 1000)")
    parser.add_argument(
        "--rescore", default="4,10", help="rescoring factors r; the first for every family (default 4,10)"
    )
    parser.add_argument(
        "--nlist", type=int, default=None, help="IVF lists (default: 256 up to 300k vectors, else 1024)"
    )
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists probed (default 16)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per search; the best counts (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()), help="where indexes are saved")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 vectors, 200 queries, 1 repeat")
    parser.add_argument("--output", type=Path, default=_common.result_path("quantized"))
    args = parser.parse_args(argv)
    args.sizes = [20_000] if args.quick else [int(size) for size in args.sizes.split(",") if size]
    args.rescore = [int(factor) for factor in args.rescore.split(",") if factor]
    if args.quick:
        args.queries, args.repeats = 200, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="embedkit-bench-quantized-", dir=args.work_dir))
    try:
        sizes = [run_size(n, args, work) for n in args.sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "benchmark": "quantized",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": _common.machine_info(
            ("embedkit", "faiss", "torch", "sentence_transformers", "numpy"),
            omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
            faiss_threads=faiss.omp_get_max_threads(),
        ),
        "settings": {
            "k": K,
            "queries": args.queries,
            "rescore_factors": args.rescore,
            "nprobe": args.nprobe,
            "repeats": args.repeats,
            "seed": args.seed,
            "metric": "inner product of unit vectors (embedkit: cosine)",
        },
        "data": {
            "kind": "synthetic",
            "dimension": DIM,
            "generator": f"two-level Gaussian mixture: n/{TOPICS_PER} topics, n/{SUBTOPIC_SIZE} subtopics, shared "
            "offset, scales 1/sqrt(i+1), random rotation, unit length (see the script's docstring)",
        },
        "sizes": sizes,
        "total_seconds": round(time.perf_counter() - started, 1),
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    _common.write_results(report, args.output)
    plot(report, args.output.with_suffix(".png"))
    log(f"done in {report['total_seconds']} s: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
