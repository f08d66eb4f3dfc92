"""Hybrid retrieval benchmark: BM25, a dense model, and their fusion, on Cranfield.

Cranfield (``../shared/data/cranfield``; documents are ``title + " " + text``): its judged queries are split
exactly as ``bench_finetune.py`` splits them (``embedkit.data.split_queries``, the same seed and shares: train
60%, dev 10%, test 30%), so that these rows sit beside its fine-tuning rows. Every row is searched through an
index kind of ``embedkit.index`` and scored by ``RetrievalEvaluator`` (trec_eval's linear gains, as BEIR and
MTEB), on the test queries:

- ``bm25``: the ``bm25`` index (bm25s, k1=1.5, b=0.75; English stop words, Snowball stemming);
- ``dense``: the model with exact search (``torch``);
- ``hybrid_rrf``: ``hybrid:torch``, reciprocal rank fusion (k=60) of the two, each 100 deep;
- ``hybrid_convex``: ``hybrid:fusion=convex,alpha=A:torch``, ``A * dense + (1 - A) * BM25`` of min-max
  normalised scores, with ``A`` the best of 0, 0.1, ..., 1 by nDCG@10 on the dev queries (the test queries choose
  nothing); the dev curve is kept in the results.

``--model`` scores another model, such as one fine-tuned on the train queries (``embedkit adapt``, or
``bench_finetune.py``'s runs), and ``--label`` names its rows; the rows of other labels already in the result file
are kept, so the rows before and after fine-tuning sit in one file and one plot. Writes
``benchmarks/results/hybrid.json`` and ``hybrid.png``.

    python benchmarks/bench_hybrid.py                                            # all-MiniLM-L6-v2, before
    python benchmarks/bench_hybrid.py --model runs/cranfield/best --label after_finetuning
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import _common
import numpy as np
from bench_finetune import SPLIT_SEED, SPLITS

from embedkit.data import split_queries
from embedkit.encoders import DEFAULT_MODEL, load_encoder
from embedkit.eval import RetrievalEvaluator
from embedkit.eval.report import CachedEncoder  # every index of a run holds one corpus: embedded once
from embedkit.types import TextEncoder

SHARED = Path(os.environ.get("EMBEDKIT_SHARED_DATA", _common.REPO_ROOT.parent / "shared" / "data"))
ALPHAS = [round(0.1 * i, 1) for i in range(11)]
ROWS = {
    "bm25": "bm25",
    "dense": "torch",
    "hybrid_rrf": "hybrid:torch",
}
CONVEX = "hybrid:fusion=convex,alpha={alpha}:torch"

log = _common.setup_logging("bench_hybrid")


def evaluate(data: Path, split: str, spec: str, encoder: TextEncoder) -> dict[str, float]:
    started = time.perf_counter()
    metrics = RetrievalEvaluator(data, split=split, index_spec=spec, gain="linear")(encoder)
    log(f"{split} {spec}: nDCG@10 {metrics['ndcg@10']:.2f}, recall@100 {metrics['recall@100']:.2f} "
        f"({time.perf_counter() - started:.1f} s)")
    return metrics


def run(data: Path, encoder: TextEncoder) -> dict[str, object]:
    """The rows of one model: the fixed specs on test, the convex weight chosen on dev, then its test row."""
    dev_curve = {str(alpha): evaluate(data, "dev", CONVEX.format(alpha=alpha), encoder)["ndcg@10"] for alpha in ALPHAS}
    best = max(ALPHAS, key=lambda alpha: (dev_curve[str(alpha)], -abs(alpha - 0.5)))  # ties: the more balanced
    rows = {name: {"spec": spec, "test": evaluate(data, "test", spec, encoder)} for name, spec in ROWS.items()}
    convex = CONVEX.format(alpha=best)
    rows["hybrid_convex"] = {"spec": convex, "alpha": best, "test": evaluate(data, "test", convex, encoder)}
    return {"rows": rows, "dev_ndcg@10_by_alpha": dev_curve}


def plot(results: dict[str, dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    names = list(next(iter(results.values()))["rows"])
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    width = 0.8 / len(labels)
    for axis, metric in zip(axes[:2], ("ndcg@10", "recall@100"), strict=True):
        for i, label in enumerate(labels):
            values = [results[label]["rows"][name]["test"][metric] for name in names]
            bars = axis.bar(np.arange(len(names)) + i * width, values, width, label=label)
            axis.bar_label(bars, fmt="%.1f", fontsize=8)
        axis.set_xticks(np.arange(len(names)) + width * (len(labels) - 1) / 2, names)
        axis.set_title(f"Cranfield test {metric} (x100)")
        axis.set_ylim(0, 100 if metric == "recall@100" else 60)
    for label in labels:
        curve = results[label]["dev_ndcg@10_by_alpha"]
        axes[2].plot([float(a) for a in curve], list(curve.values()), marker="o", label=label)
    axes[2].set_xlabel("alpha (weight of the dense scores; BM25 gets 1 - alpha)")
    axes[2].set_title("convex fusion: dev nDCG@10 by alpha")
    axes[0].legend(fontsize=8)
    figure.suptitle("BM25, dense and hybrid retrieval on Cranfield (queries split as in bench_finetune.py)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"the dense model (default: {DEFAULT_MODEL})")
    parser.add_argument("--label", default="before_finetuning", help="the name of this model's rows")
    parser.add_argument("--data-dir", type=Path, default=SHARED, help="the shared data (default: ../shared/data)")
    parser.add_argument("--output", type=Path, default=_common.result_path("hybrid"))
    args = parser.parse_args()
    previous = json.loads(args.output.read_text()) if args.output.exists() else {}
    results = previous.get("results", {})
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "cranfield"
        counts = split_queries(args.data_dir / "cranfield", data, SPLITS, seed=SPLIT_SEED)
        log(f"queries: {counts}; model {args.model}")
        machine = _common.machine_info(("embedkit", "torch", "numpy", "faiss-cpu", "bm25s", "sentence-transformers"))
        rows = run(data, CachedEncoder(load_encoder(args.model, backend="torch")))
    machine["load_average_after"] = _common.load_average()
    results[args.label] = {
        "model": str(args.model),
        "command": f"python benchmarks/bench_hybrid.py --model {args.model} --label {args.label}",
        **rows,
        "machine": machine,
    }
    document = {
        "benchmark": "hybrid",
        "data": f"cranfield (../shared/data/cranfield), judged queries split by seed {SPLIT_SEED} into {counts}, "
                "as bench_finetune.py; documents title + ' ' + text",
        "metrics": "RetrievalEvaluator: trec_eval, linear gains, x100, on the test queries; alpha chosen on dev",
        "results": results,
    }
    _common.write_results(document, args.output)
    plot(results, args.output.with_suffix(".png"))
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
