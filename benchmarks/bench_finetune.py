"""Fine-tuning benchmark: does adapting all-MiniLM-L6-v2 to a collection's judged queries make it better there,
and better than sentence-transformers on the same data?

Cranfield (``../shared/data/cranfield``): its judged queries are split once, by a fixed seed, into train (60%),
dev (10%) and test (30%); documents are ``title + " " + text``. Every variant starts from all-MiniLM-L6-v2 and
trains on the same (query, relevant document) pairs of the train queries, with the same batch size, learning
rate, warmup, training input length (128 tokens; saved models keep 256) and number of optimisation steps (two
epochs of the pairs), over three seeds for the main variants and one for the ablations (the machine has two
cores):

- ``start``: the model untrained;
- ``st_mnrl_pairs``: ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss`` (scale 20, the
  ``no_duplicates`` batch sampler) on the pairs;
- ``st_mnrl_mined``: the same on triplets from sentence-transformers' own ``mine_hard_negatives`` (one negative
  per pair from the corpus, ranks 10 to 100, relative margin 0.05, as embedkit's defaults);
- ``embedkit_plain``: embedkit's one-way InfoNCE on the pairs alone, the last model (no mining, no selection):
  the like-for-like peer of ``st_mnrl_pairs``;
- ``embedkit_adapt``: ``embedkit.training.adapt`` (what ``embedkit adapt`` runs): symmetric InfoNCE, hard
  negatives mined from the corpus by the model being trained and refreshed every epoch, the best of the start,
  the model every third of an epoch and WiSE-FT interpolations by dev nDCG@10;
- ``embedkit_no_refresh``, ``embedkit_no_interpolation``, ``embedkit_no_filters``, ``embedkit_one_way``: the
  same with one part off (negatives mined once before training; no interpolation; no margin filter or rank
  window; query-to-document InfoNCE only).

Reported on the test queries, never used in training or selection: nDCG@10 (trec_eval's linear gain, as BEIR and
MTEB) and recall@100; and the mean Spearman x100 over STS-B test, SICK-R test, STS12 and STS13, to show what
general similarity the adaptation costs (on the first seed). Writes ``benchmarks/results/finetune.json`` (after
every run) and ``finetune.png``.

    python benchmarks/bench_finetune.py [--seeds 0 1 2] [--ablation-seeds 0] [--epochs 2] [--resume]

Every run is deterministic given its seed (a rerun gives the same figures), so ``--resume`` keeps the runs of an
earlier result file taken with the same settings and runs only the missing ones.
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
from embedkit.encoders import DEFAULT_MODEL, load_encoder, resolve_model_path
from embedkit.eval import RetrievalEvaluator, STSEvaluator
from embedkit.training.adapt import ADAPT_RECIPE, adapt

REPO = _common.REPO_ROOT
SHARED = Path(os.environ.get("EMBEDKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
SPLIT_SEED = 20261201
SPLITS = {"train": 0.6, "dev": 0.1, "test": 0.3}
STS_FILES = {
    "stsb": "stsb/test.jsonl",
    "sickr": "sickr/test.jsonl",
    "sts12": "sts/sts12.test.jsonl",
    "sts13": "sts/sts13.test.jsonl",
}
Row = dict[str, float | str]  # one run's scores (x100), its seed, and for a chosen model what dev chose
TRAIN = ADAPT_RECIPE["train"]  # batch size, learning rate and warmup: the same for every variant
# name -> (overrides of the adaptation recipe, the model scored: best/ chosen on dev, or final/)
EMBEDKIT_VARIANTS = {
    "embedkit_plain": (["mining.negatives=0", "train.interpolation=[]", "loss.symmetric=false"], "final"),
    "embedkit_adapt": ([], "best"),
    "embedkit_no_refresh": (["mining.refresh_steps=0"], "best"),
    "embedkit_no_interpolation": (["train.interpolation=[]"], "best"),
    "embedkit_no_filters": (["mining.steps=[]"], "best"),
    "embedkit_one_way": (["loss.symmetric=false"], "best"),
}


log = _common.setup_logging("bench_finetune")


def scores(model_path: str | Path, data: Path, with_sts: bool = True) -> dict[str, float]:
    """Test nDCG@10 and recall@100 of a model on ``data``, and (``with_sts``) its STS Spearman on each file and
    their mean."""
    encoder = load_encoder(model_path, backend="torch")  # as adapt scores dev and test
    retrieval = RetrievalEvaluator(data, split="test", gain="linear")(encoder)
    result = {"ndcg@10": retrieval["ndcg@10"], "recall@100": retrieval["recall@100"]}
    if not with_sts:
        return result
    for name, path in STS_FILES.items():
        result[f"sts/{name}"] = STSEvaluator(SHARED / path)(encoder)["spearman"]
    result["sts/mean"] = statistics.fmean(result[f"sts/{name}"] for name in STS_FILES)
    return result


def st_train(data: Path, out: Path, seed: int, steps: int, mined: bool, train_length: int) -> Path:
    """sentence-transformers' trainer with MultipleNegativesRankingLoss on the train pairs (or mined triplets),
    inputs truncated to ``train_length`` tokens in training and the model saved with its own length."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import mine_hard_negatives
    from transformers.trainer_utils import set_seed

    set_seed(seed)
    pairs = beir_pairs(data, "train")
    model = SentenceTransformer(resolve_model_path(DEFAULT_MODEL), device="cpu")
    dataset = Dataset.from_dict({"anchor": [p.anchor for p in pairs], "positive": [p.positive for p in pairs]})
    if mined:
        corpus = [json.loads(line) for line in (data / "corpus.jsonl").read_text().splitlines()]
        documents = [f"{row['title']} {row['text']}" if row.get("title") else row["text"] for row in corpus]
        dataset = mine_hard_negatives(dataset, model, corpus=documents, range_min=10, range_max=100,
                                      relative_margin=0.05, num_negatives=1, sampling_strategy="top",
                                      output_format="triplet", use_faiss=False, verbose=False)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=int(TRAIN["batch_size"]),
        learning_rate=float(TRAIN["lr"]),
        warmup_ratio=float(TRAIN["warmup_ratio"]),
        max_steps=steps,
        batch_sampler="no_duplicates",
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                         loss=MultipleNegativesRankingLoss(model))
    inference_length, model.max_seq_length = model.max_seq_length, train_length
    trainer.train()
    model.max_seq_length = inference_length
    model.save(str(out / "model"))
    return out / "model"


def summarize(runs: dict[str, list[Row]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, spread and count over the seeds that measured each metric."""
    summary = {}
    for variant, rows in runs.items():
        summary[variant] = {}
        for metric in (key for key, value in rows[0].items() if key != "seed" and not isinstance(value, str)):
            values = [row[metric] for row in rows if metric in row]
            summary[variant][metric] = {
                "mean": statistics.fmean(values),
                "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
                "n": len(values),
            }
    return summary


def plot(summary: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(summary)
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for axis, metric in zip(axes, ("ndcg@10", "recall@100", "sts/mean"), strict=True):
        means = [summary[v][metric]["mean"] for v in variants]
        spreads = [summary[v][metric]["stdev"] for v in variants]
        axis.barh(variants, means, xerr=spreads, color=["#999999" if v == "start" else "#4477aa" for v in variants])
        axis.set_xlim(min(means) - 3, max(means) + 2)
        axis.set_title(f"Cranfield test {metric}" if metric != "sts/mean" else "mean STS Spearman (x100)")
        axis.invert_yaxis()
    figure.suptitle("all-MiniLM-L6-v2 adapted to Cranfield's train queries (mean and spread over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of the main variants (both sentence-transformers runs and embedkit_adapt)")
    parser.add_argument("--ablation-seeds", type=int, nargs="+", default=[0],
                        help="seeds of embedkit_plain and the ablations")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the train pairs, the same for every run")
    parser.add_argument("--train-max-seq-length", type=int, default=128,
                        help="tokens per input in training, for every run; models keep their inference length")
    parser.add_argument("--output", type=Path, default=_common.result_path("finetune"))
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs of --output taken with the same settings; run only the missing ones")
    args = parser.parse_args()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        data = work / "cranfield"
        counts = split_queries(SHARED / "cranfield", data, SPLITS, seed=SPLIT_SEED)
        pairs = len(beir_pairs(data, "train"))
        steps = args.epochs * (pairs // int(TRAIN["batch_size"]))
        log(f"split {counts}; {pairs} train pairs, {steps} steps per run")
        runs = earlier_runs(args) if args.resume else {}
        done = {(variant, row["seed"]) for variant, rows in runs.items() for row in rows}
        if args.resume:
            log(f"kept {len(done)} runs of {args.output.name}")
        if ("start", 0) not in done:
            runs["start"] = [{"seed": 0, **scores(DEFAULT_MODEL, data)}]
            log(f"start: {runs['start'][0]}")

        def record(variant: str, seed: int, result: Row) -> None:
            runs.setdefault(variant, []).append({"seed": seed, **result})
            log(f"{variant} seed {seed}: {result}")
            # written after every run, so that an interrupted benchmark still leaves what it measured
            write_results(args, runs, counts, pairs, steps, time.perf_counter() - started)

        def run_embedkit(variant: str, seed: int) -> None:
            if (variant, seed) in done:
                return
            overrides, scored = EMBEDKIT_VARIANTS[variant]
            outcome = adapt(data, work / f"{variant}-{seed}", seed=seed, show_progress=False,
                            overrides=[f"train.epochs={args.epochs}",
                                       f"train.max_seq_length={args.train_max_seq_length}", *overrides])
            result: Row = {**scores(outcome.run.output_dir / scored, data, with_sts=seed == min(args.seeds))}
            if scored == "best":  # what dev nDCG@10 chose, from the start, the epochs and the interpolations
                run = outcome.run
                result["chosen"] = f"step {run.best_step}" + (
                    "" if run.best_interpolation is None else f", interpolation {run.best_interpolation}")
                result["dev_ndcg@10"] = run.best_score
            record(variant, seed, result)

        def run_main(seed: int) -> None:
            for variant, mined in (("st_mnrl_pairs", False), ("st_mnrl_mined", True)):
                if (variant, seed) in done:
                    continue
                model = st_train(data, work / f"{variant}-{seed}", seed, steps, mined, args.train_max_seq_length)
                record(variant, seed, scores(model, data, with_sts=seed == min(args.seeds)))
            run_embedkit("embedkit_adapt", seed)

        # two seeds of the main variants, then the ablations, then the other seeds: what matters most comes first
        for seed in args.seeds[:2]:
            run_main(seed)
        for seed in args.ablation_seeds:
            for variant in EMBEDKIT_VARIANTS:
                if variant != "embedkit_adapt":
                    run_embedkit(variant, seed)
        for seed in args.seeds[2:]:
            run_main(seed)
    plot(summarize(runs), args.output.with_suffix(".png"))
    log(f"wrote {args.output.name} and its plot")  # --output may lie outside the repository


def settings(args: argparse.Namespace) -> dict[str, object]:
    """What makes two runs comparable: the training settings every variant shares."""
    return {"batch_size": TRAIN["batch_size"], "lr": TRAIN["lr"], "warmup_ratio": TRAIN["warmup_ratio"],
            "epochs": args.epochs, "train_max_seq_length": args.train_max_seq_length}


def earlier_runs(args: argparse.Namespace) -> dict[str, list[Row]]:
    """The runs of ``args.output`` when its settings and split are this run's; refuses a file that differs."""
    if not args.output.is_file():
        return {}
    document = json.loads(args.output.read_text())
    recorded = {key: document["settings"].get(key) for key in settings(args)}
    if recorded != settings(args) or document.get("split_seed") != SPLIT_SEED:
        raise SystemExit(f"{args.output}: taken with other settings ({recorded}); run without --resume")
    return document["runs"]


def write_results(args: argparse.Namespace, runs: dict[str, list[Row]], counts: dict[str, int],
                  pairs: int, steps: int, seconds: float) -> None:
    document = {
        "benchmark": "finetune",
        "data": "cranfield (../shared/data/cranfield), judged queries split by seed "
                f"{SPLIT_SEED} into {counts}",
        "model": DEFAULT_MODEL,
        "split_seed": SPLIT_SEED,
        "train_pairs": pairs,
        "steps": steps,
        "settings": {**settings(args), "seeds": args.seeds, "ablation_seeds": args.ablation_seeds,
                     "sts": f"measured on seed {min(args.seeds)} only"},
        "metrics": "test ndcg@10 (linear gain) and recall@100, x100; sts/* Spearman x100 of cosine",
        "summary": summarize(runs),
        "runs": runs,
        "machine": _common.machine_info(("embedkit", "torch", "sentence-transformers", "transformers")),
        "seconds": round(seconds, 1),  # of the last invocation; with --resume, earlier runs took more
        "resumed": args.resume,
    }
    _common.write_results(document, args.output)


if __name__ == "__main__":
    main()
