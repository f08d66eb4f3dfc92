"""Index builds and evaluation, end to end: embedkit against sentence-transformers' fastest backends.

Two jobs that a user times with a watch, each side in a fresh process of its own, one after the other:

(a) **index build** of ``--index-texts`` texts (the wiki sample's sentences repeated to that count; 100,000 by
    default) into an exact inner-product faiss index: embedkit's ``build_index(encoder, corpus, "faiss:Flat")``
    (embedding with the library's default batch size, normalising, indexing and the id table) against
    ``SentenceTransformer.encode(texts, normalize_embeddings=True)`` with its default batch size, then
    ``faiss.IndexFlatIP.add``. Texts per second over the whole build, model load left out.
(b) **`eval retrieval` on Cranfield** (1,400 documents, the 225 queries of its qrels): the wall time of the whole
    process, from the command to the printed metrics (imports, model load, embedding, search, scoring):
    ``embedkit eval retrieval --data cranfield`` against a script that loads the same model and runs
    sentence-transformers' ``InformationRetrievalEvaluator`` on the same queries, documents (title + " " + text)
    and judgements. nDCG@10 of both is recorded (sentence-transformers' counts every judged document as
    relevance 1, trec_eval's linear gain uses the grades, so the two differ a little).

Sides: ``embedkit-openvino``, ``embedkit-auto`` (torch, bf16 autocast on this CPU), ``sentence-transformers-bf16``
(bf16 weights), ``sentence-transformers-openvino`` (``backend="openvino"``, which needs optimum-intel and so its
own environment here: run the script there with ``--sides``, as for ``bench_train_encode.py``). The load average
before and after each run is recorded; run it on an otherwise idle machine.

Usage::

    python benchmarks/bench_pipeline_speed.py                       # every side this environment can run
    python benchmarks/bench_pipeline_speed.py --quick               # 2,000 texts: checks that the script runs
    python benchmarks/bench_pipeline_speed.py --sides sentence-transformers-openvino embedkit-auto \\
        --output benchmarks/results/pipeline_speed_st_openvino.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

REPO = _common.REPO_ROOT
WIKI_FILE = Path("wiki1m_subset") / "wiki1m_for_simcse.sample10k.txt"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDKIT_OPENVINO = "embedkit-openvino"
EMBEDKIT_AUTO = "embedkit-auto"
ST_BF16 = "sentence-transformers-bf16"
ST_OPENVINO = "sentence-transformers-openvino"
SIDES = (EMBEDKIT_OPENVINO, EMBEDKIT_AUTO, ST_BF16, ST_OPENVINO)
NEEDS = {
    EMBEDKIT_OPENVINO: ("openvino", "embedkit[openvino]"),
    ST_OPENVINO: ("optimum.intel", "optimum-intel[openvino]"),
}

log = _common.setup_logging("bench_pipeline_speed")


# -- (a) index build, in a child process ---------------------------------------------------------------------


def index_texts(data_dir: Path, count: int) -> list[str]:
    sentences = [line.rstrip("\n") for line in (data_dir / WIKI_FILE).open(encoding="utf-8") if line.strip()]
    return [sentences[i % len(sentences)] for i in range(count)]


def build_child(side: str, data_dir: Path, count: int) -> dict[str, object]:
    """Load ``side``'s model, then time one index build of ``count`` texts."""
    os.environ["TQDM_DISABLE"] = "1"
    texts = index_texts(data_dir, count)
    if side.startswith("embedkit"):
        import embedkit

        encoder = embedkit.load_encoder(
            MODEL, device="cpu", backend="openvino" if side == EMBEDKIT_OPENVINO else "torch"
        )
        encoder.encode(texts[:256])  # warm: OpenVINO compiles (or converts, once) at the first call
        start = time.perf_counter()
        index = embedkit.build_index(
            encoder, [(str(i), text) for i, text in enumerate(texts)], spec="faiss:Flat", show_progress=False
        )
        seconds = time.perf_counter() - start
        size, batch = len(index), 64  # build_index's default batch size
    else:
        import faiss
        import numpy as np
        import torch
        from sentence_transformers import SentenceTransformer

        from embedkit.encoders import resolve_model_path

        options = {"model_kwargs": {"torch_dtype": torch.bfloat16}} if side == ST_BF16 else {"backend": "openvino"}
        model = SentenceTransformer(resolve_model_path(MODEL), device="cpu", **options)
        model.encode(texts[:256])
        start = time.perf_counter()
        vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.arange(len(texts), dtype=np.int64))
        seconds = time.perf_counter() - start
        size, batch = index.ntotal, 32  # SentenceTransformer.encode's default batch size
    return {
        "texts": count,
        "indexed": int(size),
        "batch_size": batch,
        "seconds": seconds,
        "texts_per_s": count / seconds,
    }


# -- (b) eval retrieval, as whole processes ------------------------------------------------------------------

ST_EVAL_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from embedkit.encoders import resolve_model_path
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
folder, side, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
options = {"model_kwargs": {"torch_dtype": torch.bfloat16}} if side == "bf16" else {"backend": "openvino"}
model = SentenceTransformer(resolve_model_path(name), device="cpu", **options)
rows = lambda file: [json.loads(line) for line in (folder / file).open(encoding="utf-8") if line.strip()]
corpus = {row["_id"]: (row.get("title", "") + " " + row["text"]).strip() for row in rows("corpus.jsonl")}
queries = {row["_id"]: row["text"] for row in rows("queries.jsonl")}
relevant = {}
for line in list((folder / "qrels" / "test.tsv").open(encoding="utf-8"))[1:]:
    query, doc, score = line.split()
    if int(score) > 0:
        relevant.setdefault(query, set()).add(doc)
evaluator = InformationRetrievalEvaluator({q: queries[q] for q in relevant}, corpus, relevant, write_csv=False)
scores = evaluator(model)
print(json.dumps({"ndcg@10": 100 * scores[evaluator.primary_metric]}))
"""


def eval_command(side: str, data: Path, scratch: Path) -> list[str]:
    if side.startswith("embedkit"):
        embedkit_cli = shutil.which("embedkit", path=str(Path(sys.executable).parent)) or "embedkit"
        backend = "openvino" if side == EMBEDKIT_OPENVINO else "torch"
        return [
            embedkit_cli,
            "-q",
            "eval",
            "retrieval",
            "--data",
            str(data),
            "--backend",
            backend,
            "--device",
            "cpu",
            "--json",
        ]
    script = scratch / "st_eval.py"
    script.write_text(ST_EVAL_SCRIPT)
    return [sys.executable, str(script), str(data), "bf16" if side == ST_BF16 else "openvino", MODEL]


def time_eval(side: str, data: Path, scratch: Path) -> dict[str, object]:
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(eval_command(side, data, scratch), capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{side}: eval failed ({done.returncode}):\n{done.stderr[-2000:]}")
    printed = json.loads(done.stdout)
    ndcg = printed["ndcg@10"] if "ndcg@10" in printed else printed["metrics"]["ndcg@10"]
    return {
        "wall_s": seconds,
        "ndcg@10": ndcg,
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


# -- the parent ------------------------------------------------------------------------------------------------


def run_build(side: str, data_dir: Path, count: int) -> dict[str, object]:
    """(a) in a fresh process, so that no side warms the caches of the next."""
    load_before = os.getloadavg()[0]
    done = subprocess.run(
        [sys.executable, __file__, "--child-build", side, "--data-dir", str(data_dir), "--index-texts", str(count)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
    )
    if done.returncode != 0:
        raise SystemExit(f"{side}: index build failed ({done.returncode}):\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["loadavg_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


def plot(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4))
    for axis, section, key, title in (
        (axes[0], "index_build", "texts_per_s", f"index build, {document['settings']['index_texts']:,} texts: texts/s"),
        (axes[1], "eval_retrieval", "wall_s", "eval retrieval on Cranfield, whole process: seconds"),
    ):
        rows = {side: result for side, result in document[section].items() if key in result}
        colours = ["#888888" if side.startswith("sentence") else "#1f77b4" for side in rows]
        bars = axis.barh(list(rows), [result[key] for result in rows.values()], color=colours)
        axis.bar_label(bars, fmt="%.1f", fontsize=8)
        axis.set_title(title, fontsize=9)
        axis.invert_yaxis()
    figure.suptitle("all-MiniLM-L6-v2; grey: sentence-transformers", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--index-texts", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the eval timing (the build runs once)")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("EMBEDKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--quick", action="store_true", help="2,000 texts, one round, to a temporary folder")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--child-build", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_build:
        print(json.dumps(build_child(args.child_build, args.data_dir, args.index_texts)))
        return
    if args.quick:
        args.index_texts, args.rounds = 2_000, 1

    with tempfile.TemporaryDirectory() as scratch:
        output = args.output or (
            Path(scratch) / "pipeline_speed.json" if args.quick else _common.result_path("pipeline_speed")
        )
        document: dict[str, object] = {
            "benchmark": "pipeline_speed" + (" (quick run: numbers mean nothing)" if args.quick else ""),
            "model": MODEL,
            "settings": {
                "index_texts": args.index_texts,
                "index_spec": "faiss:Flat (exact inner product)",
                "index_data": f"{WIKI_FILE} sentences repeated to {args.index_texts}",
                "eval_data": "cranfield, qrels/test.tsv (225 queries, 1,400 documents)",
                "eval_rounds": args.rounds,
                "sides": args.sides,
            },
            "index_build": {},
            "eval_retrieval": {},
        }
        runnable = []
        for side in args.sides:
            reason = _common.missing_package(*NEEDS.get(side, (None, None)))
            if reason:
                document["index_build"][side] = document["eval_retrieval"][side] = {"skipped": reason}
                log(f"{side}: skipped ({reason})")
            else:
                runnable.append(side)
        for side in runnable:
            log(f"index build: {side}")
            document["index_build"][side] = run_build(side, args.data_dir, args.index_texts)
            log(f"  {document['index_build'][side]['texts_per_s']:.1f} texts/s")
        for side in runnable:
            rounds = []
            for _ in range(args.rounds):
                rounds.append(time_eval(side, args.data_dir / "cranfield", Path(scratch)))
                log(f"eval retrieval: {side}: {rounds[-1]['wall_s']:.1f} s, ndcg@10 {rounds[-1]['ndcg@10']:.2f}")
            document["eval_retrieval"][side] = {
                **rounds[-1],
                "wall_s": min(r["wall_s"] for r in rounds),
                "wall_s_rounds": [r["wall_s"] for r in rounds],
                "loadavg_1min_before_after": [r["loadavg_1min_before_after"] for r in rounds],
            }
        document["machine"] = _common.machine_info(
            ("embedkit", "torch", "transformers", "sentence-transformers", "openvino", "optimum-intel", "faiss-cpu")
        )
        _common.write_results(document, output)
        plot(document, output.with_suffix(".png"))
        log(f"wrote {output} and its plot")


if __name__ == "__main__":
    main()
