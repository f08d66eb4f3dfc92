"""Matryoshka benchmark: does training at several leading-dimension cuts (Kusupati et al., 2022) keep
all-MiniLM-L6-v2's quality when its embeddings are cut, and what does it cost at the full size?

Cranfield (``../shared/data/cranfield``): its judged queries are split once, by the seed of
``bench_finetune.py``, into train (60%), dev (10%) and test (30%) with ``embedkit.data.split_queries``;
documents are ``title + " " + text``. Both variants start from all-MiniLM-L6-v2 and train with ``embedkit.fit``
on the same (query, relevant document) pairs of the train queries, with the same batch size, learning rate,
warmup, training input length (128 tokens) and number of steps (two epochs of the pairs); the final model is
scored (no selection on dev):

- ``start``: the model untrained;
- ``infonce``: InfoNCE at temperature 0.05 on the whole embeddings;
- ``matryoshka``: the same InfoNCE summed over the cuts 384, 256, 128, 64 and 32 (weights 1), as
  ``matryoshka_dims = [384, 256, 128, 64, 32]`` in a recipe.

Each model is scored with its embeddings cut to 384, 256, 128, 64 and 32 dimensions (normalised again; each text
embedded once, ``embedkit.eval.report.dimension_curve``): nDCG@10 (trec_eval's linear gain) and recall@100 on the
test queries, never used in training, and STS-B test Spearman x100. Writes ``benchmarks/results/matryoshka.json``
(after every run) and ``matryoshka.png``.

    python benchmarks/bench_matryoshka.py [--seeds 0 1 2] [--epochs 2] [--data-dir ../shared/data]
    python benchmarks/bench_matryoshka.py --resume   # trains only the seeds the results file lacks
    python benchmarks/bench_matryoshka.py --smoke   # a few steps and queries, to a temporary folder; numbers mean nothing
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import _common

from embedkit.data import beir_pairs, split_queries
from embedkit.encoders import DEFAULT_MODEL, load_encoder
from embedkit.eval import RetrievalEvaluator, STSEvaluator
from embedkit.eval.report import dimension_curve
from embedkit.losses import build_loss, matryoshka
from embedkit.training.adapt import ADAPT_RECIPE
from embedkit.training.fit import FitSettings, fit

REPO = _common.REPO_ROOT
SPLIT_SEED = 20261201  # bench_finetune.py's split
SPLITS = {"train": 0.6, "dev": 0.1, "test": 0.3}
DIMS = (384, 256, 128, 64, 32)
TEMPERATURE = 0.05
TRAIN = ADAPT_RECIPE["train"]  # batch size, learning rate and warmup of `embedkit adapt`, for both variants
VARIANTS = ("infonce", "matryoshka")
SMOKE = {"steps": 2, "test_queries": 8, "other_documents": 40, "sts_pairs": 40}

log = _common.setup_logging("bench_matryoshka")


def smoke_data(data: Path, sts: Path, work: Path) -> Path:
    """Cut the split folder to the train pairs of the smoke steps, a few test queries, the documents they judge and
    a few more, and STS-B test to a few pairs. New files replace the old ones: the split folder's corpus is a hard
    link to the shared data. Returns the small STS file."""
    header, *judgements = (data / "qrels" / "test.tsv").read_text().splitlines()
    kept = list(dict.fromkeys(line.split("\t")[0] for line in judgements))[: SMOKE["test_queries"]]
    judged = [line for line in judgements if line.split("\t")[0] in kept]
    (data / "qrels" / "test.tsv").write_text("\n".join([header, *judged]) + "\n")
    header, *judgements = (data / "qrels" / "train.tsv").read_text().splitlines()
    trained = judgements[: SMOKE["steps"] * int(TRAIN["batch_size"])]
    (data / "qrels" / "train.tsv").write_text("\n".join([header, *trained]) + "\n")
    needed = {line.split("\t")[1] for line in judged + trained}
    corpus = [(json.loads(row)["_id"], row) for row in (data / "corpus.jsonl").read_text().splitlines()]
    others = [row for doc, row in corpus if doc not in needed][: SMOKE["other_documents"]]
    rows = [row for doc, row in corpus if doc in needed] + others
    (data / "corpus.jsonl").unlink()
    (data / "corpus.jsonl").write_text("\n".join(rows) + "\n")
    small = work / "stsb-test-smoke.jsonl"
    small.write_text("\n".join(sts.read_text().splitlines()[: SMOKE["sts_pairs"]]) + "\n")
    return small


def curves(model: object, retrieval: RetrievalEvaluator, sts: STSEvaluator, dims: tuple[int, ...]) -> dict:
    """``{metric: {dim: value}}`` of a loaded model: test nDCG@10 and recall@100, STS-B test Spearman."""
    by_dim = dimension_curve(retrieval, model, dims)  # type: ignore[arg-type]
    sts_by_dim = dimension_curve(sts, model, dims)  # type: ignore[arg-type]
    return {
        "ndcg@10": {dim: by_dim[dim]["ndcg@10"] for dim in dims},
        "recall@100": {dim: by_dim[dim]["recall@100"] for dim in dims},
        "stsb": {dim: sts_by_dim[dim]["spearman"] for dim in dims},
    }


def train(variant: str, pairs: list, out: Path, seed: int, steps: int, train_length: int) -> object:
    """The final model of ``variant`` trained on ``pairs`` for ``steps`` steps."""
    loss = build_loss("infonce", temperature=TEMPERATURE)
    if variant == "matryoshka":
        loss = matryoshka(loss, DIMS)
    encoder = load_encoder(DEFAULT_MODEL, backend="torch")
    settings = FitSettings(
        output_dir=out, batch_size=int(TRAIN["batch_size"]), lr=float(TRAIN["lr"]),
        warmup_ratio=float(TRAIN["warmup_ratio"]), max_steps=steps, max_seq_length=train_length, seed=seed,
        show_progress=False,
    )
    fit(encoder, pairs, loss, settings, kind="pairs")
    return encoder


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{variant: {metric: {dim: {mean, stdev, n}}}}`` over the seeds."""
    summary: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for variant, rows in runs.items():
        summary[variant] = {}
        for metric in rows[0]:
            summary[variant][metric] = {}
            for dim in rows[0][metric]:
                values = [row[metric][dim] for row in rows]
                summary[variant][metric][str(dim)] = {
                    "mean": statistics.fmean(values),
                    "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "n": len(values),
                }
    return summary


def plot(summary: dict, path: Path) -> None:
    from embedkit.eval import plots

    titles = {"ndcg@10": "Cranfield test nDCG@10", "recall@100": "Cranfield test recall@100",
              "stsb": "STS-B test Spearman"}
    means = {variant: {titles[metric]: {int(dim): cell["mean"] for dim, cell in by_dim.items()}
                       for metric, by_dim in metrics.items()}
             for variant, metrics in summary.items()}
    figure = plots.dimension_curves(means)
    figure.suptitle("all-MiniLM-L6-v2 on Cranfield's train pairs: embeddings cut to their first dimensions "
                    "(mean over seeds)", fontsize=9)
    plots.save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of both variants")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the train pairs, the same for both")
    parser.add_argument("--train-max-seq-length", type=int, default=128,
                        help="tokens per input in training; models keep their inference length")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("EMBEDKIT_SHARED_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--smoke", action="store_true",
                        help=f"{SMOKE['steps']} steps, {SMOKE['test_queries']} test queries, one seed, written to a "
                        "temporary folder unless --output says otherwise: checks that the script runs")
    parser.add_argument("--output", type=Path, default=None,
                        help="the results file (default benchmarks/results/matryoshka.json); the plot goes beside it")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs of the results file (its settings must be these) and train only the "
                        "seeds it lacks")
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.smoke else args.seeds

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        output = args.output or (work / "matryoshka_smoke.json" if args.smoke else _common.result_path("matryoshka"))
        data = work / "cranfield"
        counts = split_queries(args.data_dir / "cranfield", data, SPLITS, seed=SPLIT_SEED)
        sts_file = args.data_dir / "stsb" / "test.jsonl"
        if args.smoke:
            sts_file = smoke_data(data, sts_file, work)
        pairs = beir_pairs(data, "train")
        steps = SMOKE["steps"] if args.smoke else args.epochs * (len(pairs) // int(TRAIN["batch_size"]))
        log(f"split {counts}; {len(pairs)} train pairs, {steps} steps per run")
        retrieval = RetrievalEvaluator(data, split="test", gain="linear")
        sts = STSEvaluator(sts_file)

        runs: dict[str, list[dict]] = {}
        finished: list[int] = []  # seeds that both trained variants have run
        if args.resume and output.exists():
            runs, finished, seconds_before = earlier_runs(output, args)
            started -= seconds_before
            log(f"resuming {output}: seeds {finished} already measured")

        def record(variant: str, result: dict, seed: int | None = None) -> None:
            runs.setdefault(variant, []).append(result)
            if variant == VARIANTS[-1]:
                finished.append(seed)
            log(f"{variant}{'' if seed is None else f' seed {seed}'}: " + "; ".join(
                f"{metric} " + " ".join(f"{dim}:{value:.2f}" for dim, value in by_dim.items())
                for metric, by_dim in result.items()))
            # written after every run, so that an interrupted benchmark still leaves what it measured
            write_results(output, args, finished, runs, counts, len(pairs), steps, time.perf_counter() - started)

        if "start" not in runs:
            record("start", curves(load_encoder(DEFAULT_MODEL, backend="torch"), retrieval, sts, DIMS))
        for seed in [seed for seed in seeds if seed not in finished]:
            for variant in VARIANTS:
                encoder = train(variant, pairs, work / f"{variant}-{seed}", seed, steps, args.train_max_seq_length)
                record(variant, curves(encoder, retrieval, sts, DIMS), seed)
        plot(summarize(runs), output.with_suffix(".png"))
        log(f"wrote {output} and its plot")
        if args.smoke:
            for path in (output, output.with_suffix(".png")):
                assert path.stat().st_size > 0, path
            log("smoke run passed (its files go with the temporary folder)")


def earlier_runs(output: Path, args: argparse.Namespace) -> tuple[dict[str, list[dict]], list[int], float]:
    """The runs, finished seeds and seconds of an earlier results file, for ``--resume``.

    Rows of a seed that did not finish for every variant are dropped, so that the seed runs again.
    """
    document = json.loads(output.read_text())
    settings = document["settings"]
    if (settings["epochs"], settings["train_max_seq_length"]) != (args.epochs, args.train_max_seq_length):
        raise SystemExit(f"{output} was measured with epochs {settings['epochs']} and train_max_seq_length "
                         f"{settings['train_max_seq_length']}; resume with the same settings")
    finished = list(settings["seeds"])
    runs = {variant: [{metric: {int(dim): value for dim, value in by_dim.items()} for metric, by_dim in row.items()}
                      for row in rows[:1 if variant == "start" else len(finished)]]
            for variant, rows in document["runs"].items()}
    return runs, finished, float(document["seconds"])


def write_results(output: Path, args: argparse.Namespace, finished: list[int], runs: dict[str, list[dict]],
                  counts: dict[str, int], pairs: int, steps: int, seconds: float) -> None:
    shared = Path(os.path.relpath(args.data_dir, REPO))  # ../shared/data, not this machine's path
    document = {
        "benchmark": "matryoshka" + (" (smoke run: numbers mean nothing)" if args.smoke else ""),
        "data": f"cranfield ({shared / 'cranfield'}), judged queries split by seed {SPLIT_SEED} into "
                f"{counts}; STS-B test ({shared / 'stsb' / 'test.jsonl'})",
        "model": DEFAULT_MODEL,
        "train_pairs": pairs,
        "steps": steps,
        "settings": {"loss": f"infonce, temperature {TEMPERATURE}", "matryoshka_dims": list(DIMS),
                     "matryoshka_weights": [1.0] * len(DIMS), "batch_size": TRAIN["batch_size"], "lr": TRAIN["lr"],
                     "warmup_ratio": TRAIN["warmup_ratio"], "epochs": args.epochs,
                     "train_max_seq_length": args.train_max_seq_length, "seeds": finished,
                     "model_scored": "the final model of each run (no selection)"},
        "metrics": "by dimensions kept: test ndcg@10 (linear gain) and recall@100, x100; stsb: STS-B test Spearman "
                   "x100 of cosine; embeddings cut to their first dimensions and normalised again",
        "summary": summarize(runs),
        "runs": {variant: [{metric: {str(dim): value for dim, value in by_dim.items()} for metric, by_dim in row.items()}
                           for row in rows] for variant, rows in runs.items()},
        "machine": _common.machine_info(("embedkit", "torch", "sentence-transformers", "transformers")),
        "seconds": round(seconds, 1),
    }
    _common.write_results(document, output)


if __name__ == "__main__":
    main()
