"""Quality of embedkit's contrastive objectives against SimCSE and sentence-transformers, in one run.

Every method starts from the same model (the offline all-MiniLM-L6-v2, precision ``auto``) and trains with the
same data, steps, batch size, learning rate, schedule and seed. Three tasks (issue 3, "Quality benchmark"):

- ``cranfield``: unsupervised domain adaptation on the Cranfield corpus texts alone (no queries); the score is
  Cranfield nDCG@10 of the final model (there is no dev split to select on, so no selection);
- ``wiki``: unsupervised STS on wiki sentences; the checkpoint is selected on STS-B dev (or a seeded subset,
  ``--dev-size``);
- ``snli``: supervised SimCSE on SNLI (anchor, entailment, contradiction) triplets, with and without each filter
  step, and GISTEmbed with the untrained model as frozen guide; selected on STS-B dev.

STS methods report Spearman x100 on STS-B test, SICK-R test, STS12 and STS13. The sentence-transformers
equivalents (MultipleNegativesRankingLoss for SimCSE/InfoNCE, GISTEmbedLoss for guide filtering) run in a plain
loop on identical batches, optimiser, schedule, clipping and bf16 autocast, evaluated by the same evaluators.

Results go to ``benchmarks/results/objectives.json`` (rewritten after every method, so a cut-off run keeps what
it finished) and the training curves to ``objectives_curves.png`` beside it.

Usage::

    python benchmarks/bench_objectives.py                       # defaults: 30 steps, subsampled eval sets
    python benchmarks/bench_objectives.py --steps 100 --eval-every 25 --dev-size 0 --test-size 0 \
        --doc-eval-length 256                                   # the recorded run: 36 minutes on 2 cores
    python benchmarks/bench_objectives.py --quick               # smoke run: few steps, tiny eval sets
    python benchmarks/bench_objectives.py --only wiki/simcse-unsup,snli/st-mnrl
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Set before torch and transformers are imported: the model is local, and library progress bars would
# interleave with this script's own progress lines.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import _common
import torch
import transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.losses import GISTEmbedLoss, MultipleNegativesRankingLoss

import embedkit
from embedkit.encoders import DEFAULT_MODEL, Encoder, resolve_model_path
from embedkit.eval import RetrievalEvaluator, STSEvaluator
from embedkit.precision import autocast
from embedkit.training.fit import _epoch_order  # the same batch order as fit(), so both libraries see identical batches
from embedkit.types import Example, Kind

REPO = _common.REPO_ROOT
UNTRAINED_CRANFIELD_NDCG10 = 36.79  # issue 3's reference for the untrained model
ISSUE_BUDGET_S = 2 * 3600  # "the whole run must fit in about two hours"

# Filter steps of the supervised task; the margin and ceiling values are issue/brief defaults, not tuned.
FILTERS: dict[str, dict[str, Any]] = {
    "margin-rel-0.05": {"name": "margin", "margin": 0.05, "mode": "relative"},
    "ceiling-0.9": {"name": "ceiling", "max_score": 0.9},
    "top-k-8": {"name": "top-k", "k": 8},
}


log = _common.setup_logging("bench_objectives")  # to stderr with a timestamp: the nohup log shows where time goes


@dataclass(frozen=True)
class Method:
    """One row of the results: a task, a library and how to build its loss.

    ``loss`` is an embedkit loss name with ``params``; ``st_loss`` is set instead for sentence-transformers rows
    (``"mnrl"`` or ``"gist"``).
    """

    task: str
    name: str
    loss: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    st_loss: str | None = None

    @property
    def key(self) -> str:
        return f"{self.task}/{self.name}"

    @property
    def library(self) -> str:
        return "sentence-transformers" if self.st_loss else "embedkit"


def methods(guide_path: str, queue_size: int) -> list[Method]:
    """Every method of the benchmark, in run order (cheap, central comparisons first within each task)."""
    unsupervised = [
        ("simcse-unsup", {}),
        ("debiased-infonce", {}),
        ("dclr", {}),
        # no pretrained masked LM is installed offline: the documented unigram fallback generator
        ("diffcse", {"generator": "unigram"}),
    ]
    rows = [Method("cranfield", name, name, params) for name, params in unsupervised]
    rows.append(Method("cranfield", "st-mnrl", st_loss="mnrl"))
    rows += [Method("wiki", name, name, params) for name, params in unsupervised]
    rows.append(Method("wiki", "infonce-queue", "infonce-queue", {"queue_size": queue_size}))
    rows.append(Method("wiki", "st-mnrl", st_loss="mnrl"))
    rows.append(Method("snli", "simcse-sup", "simcse-sup"))
    rows += [Method("snli", f"simcse-sup+{label}", "simcse-sup", {"filters": [spec]}) for label, spec in FILTERS.items()]
    rows.append(Method("snli", "gist", "gist", {"guide": guide_path}))
    rows.append(Method("snli", "st-mnrl", st_loss="mnrl"))
    rows.append(Method("snli", "st-gist", st_loss="gist"))
    return rows


class LengthSwitchingEvaluator:
    """Runs ``inner`` with the encoder's ``max_seq_length`` raised to ``length``, then restores it.

    Training truncates to a short length for speed; evaluation must not, or long test sentences would be scored
    on their first tokens only and the untrained baseline would not match published numbers.
    """

    def __init__(self, inner: Callable[[Any], dict[str, float]], length: int) -> None:
        self.inner = inner
        self.length = length
        self.primary_metric = getattr(inner, "primary_metric", "spearman")

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        train_length = encoder.max_seq_length
        encoder.max_seq_length = self.length
        try:
            return self.inner(encoder)
        finally:
            encoder.max_seq_length = train_length


def subset(path: Path, size: int, folder: Path) -> Path:
    """A fixed random subset of an STS file (seed 0, independent of --seed), written as JSONL; all when size is 0.

    Every method is scored on the same pairs, so differences between methods are paired comparisons.
    """
    rows = path.read_text(encoding="utf-8").splitlines()
    if not size or size >= len(rows):
        return path
    chosen = sorted(random.Random(0).sample(range(len(rows)), size))
    out = folder / f"{path.parent.name}_{path.stem}_{size}.jsonl"
    out.write_text("\n".join(rows[i] for i in chosen) + "\n", encoding="utf-8")
    return out


def test_sets(data_dir: Path) -> dict[str, Path]:
    """The STS test files reported for every STS method."""
    return {
        "stsb-test": data_dir / "stsb" / "test.jsonl",
        "sickr-test": data_dir / "sickr" / "test.jsonl",
        "sts12": data_dir / "sts" / "sts12.test.jsonl",
        "sts13": data_dir / "sts" / "sts13.test.jsonl",
    }


def sts_scores(encoder: Encoder, evaluators: dict[str, Callable[[Any], dict[str, float]]]) -> dict[str, float]:
    """Spearman x100 per test set, and their mean as ``avg``."""
    scores = {name: round(evaluator(encoder)["spearman"], 2) for name, evaluator in evaluators.items()}
    scores["avg"] = round(sum(scores.values()) / len(scores), 2)
    return scores


def training_examples(task: str, data_dir: Path, limit: int | None) -> tuple[list[Example], Kind]:
    """The training rows of a task and their kind."""
    if task == "cranfield":
        # Documents as the retrieval evaluator embeds them (title + text); one view per dropout pass.
        corpus = embedkit.eval.retrieval.read_beir(data_dir / "cranfield").documents
        texts = [t for t in corpus if t.strip()][:limit]
        return [Example(anchor=t, positive=t) for t in texts], Kind.SENTENCES
    if task == "wiki":
        path = data_dir / "wiki1m_subset" / "wiki1m_for_simcse.head.txt"
        return list(embedkit.read_examples(path, kind="sentences", limit=limit)), Kind.SENTENCES
    path = data_dir / "nli" / "snli_dev_test.triplets.jsonl"
    return list(embedkit.read_examples(path, kind="triplets", limit=limit)), Kind.TRIPLETS


def fresh_encoder(max_seq_length: int, seed: int) -> Encoder:
    """The starting model, reloaded for each method so no run sees another's weights."""
    torch.manual_seed(seed)
    return embedkit.load_encoder(precision="auto", max_seq_length=max_seq_length, backend="torch")


def read_curve(log_path: Path) -> dict[str, list]:
    """Loss per step and dev score per evaluation from a ``log.jsonl``."""
    curve: dict[str, list] = {"loss_step": [], "loss": [], "dev_step": [], "dev": []}
    for line in log_path.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            curve["loss_step"].append(record["step"])
            curve["loss"].append(float(f"{record['loss']:.6g}"))  # significant digits: losses near 0 matter
        if "eval" in record:
            curve["dev_step"].append(record["step"])
            curve["dev"].append(round(record["eval"]["spearman"], 2))
    return curve


def train_embedkit(
    method: Method, encoder: Encoder, examples: list[Example], kind: Kind, settings: embedkit.FitSettings, dev
) -> Encoder:
    """``embedkit.fit``; returns the selected model (best on dev when there is a dev evaluator, else final)."""
    loss = embedkit.build_loss(method.loss, **method.params)
    result = embedkit.fit(encoder, examples, loss, settings, evaluator=dev, kind=kind)
    if dev is None:
        return encoder
    log(f"  best dev {result.best_score:.2f} at step {result.best_step}")
    best = embedkit.load_encoder(Path(settings.output_dir) / "best", precision="auto", backend="torch")
    best.max_seq_length = encoder.max_seq_length
    return best


def st_features(encoder: Encoder, method: Method, rows: Sequence[Example]) -> list[dict[str, torch.Tensor]]:
    """sentence-transformers' input columns: (anchor, positive) or (anchor, positive, negative)."""
    columns = [[e.anchor for e in rows], [e.positive for e in rows]]
    if rows[0].negatives:
        columns.append([e.negatives[0] for e in rows])
    return [encoder.tokenize(texts) for texts in columns]


def train_sentence_transformers(
    method: Method, encoder: Encoder, examples: list[Example], settings: embedkit.FitSettings, dev
) -> Encoder:
    """A plain training loop around a sentence-transformers loss, matching ``fit`` in everything but the loss.

    Same batches (``fit``'s shuffled order), AdamW, linear warmup and decay, gradient clipping at
    ``max_grad_norm``, bf16 autocast where embedkit's ``auto`` precision uses it, dev evaluation at step 0,
    every ``eval_steps`` and at the end with the best weights kept, and a ``log.jsonl`` in ``fit``'s format.
    """
    model: SentenceTransformer = encoder.model
    if method.st_loss == "mnrl":
        loss = MultipleNegativesRankingLoss(model, scale=20.0)  # scale 20 = temperature 0.05, as simcse/infonce
    else:
        guide = SentenceTransformer(resolve_model_path(DEFAULT_MODEL), device=str(encoder.device))
        guide.max_seq_length = encoder.max_seq_length
        loss = GISTEmbedLoss(model, guide=guide, temperature=0.01)  # embedkit gist's default temperature
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    total = settings.max_steps
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total), total)
    output = Path(settings.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    log_path = output / "log.jsonl"
    best_score, best_state, best_step = None, None, None

    def record(entry: dict[str, Any]) -> None:
        with log_path.open("a") as file:
            file.write(json.dumps(entry) + "\n")

    def evaluate(step: int) -> None:
        nonlocal best_score, best_state, best_step
        metrics = dev(encoder)
        record({"step": step, "eval": metrics})
        if best_score is None or metrics["spearman"] > best_score:
            best_score, best_step = metrics["spearman"], step
            best_state = copy.deepcopy(model.state_dict())

    torch.manual_seed(settings.seed)
    if dev is not None:
        evaluate(0)
    per_epoch = len(examples) // settings.batch_size
    started = time.perf_counter()
    for step in range(1, total + 1):
        epoch, position = divmod(step - 1, per_epoch)
        order = _epoch_order(len(examples), settings.seed, epoch)
        rows = [examples[i] for i in order[position * settings.batch_size : (position + 1) * settings.batch_size]]
        model.train()
        with autocast(encoder.compute_dtype(), encoder.device):
            value = loss(st_features(encoder, method, rows), torch.zeros(len(rows)))
        optimizer.zero_grad()
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        record({"step": step, "epoch": epoch, "loss": value.item(), "elapsed_s": time.perf_counter() - started})
        if dev is not None and (step % settings.eval_steps == 0 or step == total):
            evaluate(step)
    if dev is not None:
        log(f"  best dev {best_score:.2f} at step {best_step}")
        model.load_state_dict(best_state)
    return encoder


def machine() -> dict[str, Any]:
    """Where and with what the numbers were taken (the fields of the first recorded run, kept for comparison)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": _common.load_average(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        **_common.versions(("torch", "transformers", "sentence_transformers", "embedkit")),
        "precision": str(embedkit.load_encoder(precision="auto").compute_dtype()),
    }


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Training loss (top) and dev Spearman (bottom) per method, one column per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = ["cranfield", "wiki", "snli"]
    figure, axes = plt.subplots(2, 3, figsize=(17, 9), squeeze=False)
    for column, task in enumerate(tasks):
        loss_axis, dev_axis = axes[0][column], axes[1][column]
        for key, row in results["methods"].items():
            if row["task"] != task or "curve" not in row:
                continue
            curve = row["curve"]
            style = "--" if row["library"] == "sentence-transformers" else "-"
            loss_axis.plot(curve["loss_step"], curve["loss"], style, label=row["name"], linewidth=1)
            if curve["dev"]:
                dev_axis.plot(curve["dev_step"], curve["dev"], style + "o", label=row["name"], markersize=3)
        loss_axis.set_title(f"{task}: training loss")
        loss_axis.set_xlabel("step")
        loss_axis.legend(fontsize=7)
        dev_axis.set_title(f"{task}: STS-B dev Spearman x100" if task != "cranfield" else "cranfield: no dev set")
        dev_axis.set_xlabel("step")
        if task == "cranfield":
            dev_axis.text(0.5, 0.5, "no dev split: the final model is scored", ha="center", transform=dev_axis.transAxes)
        else:
            dev_axis.legend(fontsize=7)
    figure.suptitle("embedkit objectives vs sentence-transformers (dashed): " + results["settings"]["summary"])
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_notes(args: argparse.Namespace, results: dict[str, Any], rows: list[Method]) -> list[str]:
    """What a reader must know about how far this run was shortened, kept current after every method."""
    done = [k for k, r in results["methods"].items() if "error" not in r and "skipped" not in r]
    return [
        f"Steps used: {args.steps} per method at batch {args.batch_size} ({args.steps * args.batch_size} rows, well "
        f"under one epoch of any task). {len(done)} of {len(rows)} methods completed in "
        f"{results.get('total_wall_s', 0):.0f} s. Issue 3 allows about {ISSUE_BUDGET_S // 3600} hours for the whole "
        f"run; this one was shortened to fit a time budget of {args.time_budget_s or 'unlimited'} s on a 2-core "
        "machine, so these are scores of very short runs. "
        + (
            "STS test sets are scored whole."
            if not args.test_size
            else f"STS test sets are subsampled to {args.test_size} pairs: differences of a point or less between "
            "methods are within their noise."
        ),
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--steps", type=int, default=30, help="optimisation steps per method")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=15, help="dev evaluation interval (plus start and end)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--max-seq-length", type=int, default=32, help="training truncation for sentences")
    parser.add_argument("--doc-seq-length", type=int, default=64, help="training truncation for Cranfield documents")
    parser.add_argument("--eval-seq-length", type=int, default=256, help="STS truncation at evaluation (model default)")
    parser.add_argument("--doc-eval-length", type=int, default=128, help="Cranfield truncation at evaluation")
    parser.add_argument("--dev-size", type=int, default=250, help="STS-B dev pairs used for checkpoint selection")
    parser.add_argument("--test-size", type=int, default=400, help="pairs per STS test set (0: the whole set)")
    parser.add_argument("--queue-size", type=int, default=256, help="infonce-queue size (scaled to the short run)")
    parser.add_argument("--time-budget-s", type=int, default=0, help="start no method after this many seconds (0: no limit)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 steps, batch 8, few rows")
    parser.add_argument("--only", default="", help="comma list of methods: task/name, name, or task")
    parser.add_argument("--output", type=Path, default=_common.result_path("objectives"))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.eval_every, args.dev_size, args.test_size = 4, 8, 2, 40, 40
    return args


def selected(rows: list[Method], only: str) -> list[Method]:
    """The methods named by --only (matching a key, a name or a task); all when empty."""
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    if not wanted:
        return rows
    chosen = [m for m in rows if {m.key, m.name, m.task} & wanted]
    unknown = wanted - {x for m in rows for x in (m.key, m.name, m.task)}
    if unknown:
        raise SystemExit(f"unknown methods in --only: {', '.join(sorted(unknown))}; valid: {', '.join(m.key for m in rows)}")
    return chosen


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    guide_path = resolve_model_path(DEFAULT_MODEL)
    rows = selected(methods(guide_path, args.queue_size), args.only)
    work = Path(tempfile.mkdtemp(prefix="bench_objectives_"))
    dev_path = subset(args.data_dir / "stsb" / "dev.jsonl", args.dev_size, work)
    dev = LengthSwitchingEvaluator(STSEvaluator(dev_path), args.eval_seq_length)
    tests = {
        name: LengthSwitchingEvaluator(STSEvaluator(subset(path, args.test_size, work)), args.eval_seq_length)
        for name, path in test_sets(args.data_dir).items()
    }
    cranfield = LengthSwitchingEvaluator(RetrievalEvaluator(args.data_dir / "cranfield"), args.doc_eval_length)
    row_limit = 400 if args.quick else None

    summary = (
        f"{args.steps} steps x batch {args.batch_size}, lr {args.lr}, seed {args.seed}, "
        f"max_seq_length {args.max_seq_length} (Cranfield docs {args.doc_seq_length}) in training, "
        f"{args.eval_seq_length} (docs {args.doc_eval_length}) at eval, {args.test_size or 'all'} pairs per STS test set"
    )
    results: dict[str, Any] = {
        "benchmark": "objectives",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "summary": summary,
            "model": DEFAULT_MODEL,
            "model_path": guide_path,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "warmup_ratio": 0.1,
            "schedule": "linear warmup then linear decay to 0; AdamW, weight decay 0, grad-norm clip 1.0",
            "seed": args.seed,
            "eval_every": args.eval_every,
            "max_seq_length_train": args.max_seq_length,
            "max_seq_length_train_cranfield": args.doc_seq_length,
            "max_seq_length_eval": args.eval_seq_length,
            "max_seq_length_eval_cranfield": args.doc_eval_length,
            "sts_test_pairs": args.test_size or "all",
            "sts_test_subsets": "each test set subsampled to sts_test_pairs pairs with seed 0, the same pairs for "
            "every method (paired comparison); the untrained row uses the same subsets",
            "dev_selection": f"STS-B dev, {args.dev_size} pairs sampled with seed 0; evaluated at step 0, every "
            f"{args.eval_every} steps and at the end; best kept (wiki and snli only)",
            "cranfield_selection": "none: the final model is scored (no dev split; queries are the test set)",
            "filters": FILTERS,
            "queue_size": args.queue_size,
            "quick": args.quick,
            "time_budget_s": args.time_budget_s or None,
            "only": args.only or None,
        },
        "untrained": {},
        "methods": {},
        "notes": [],
    }
    _common.write_results(results, args.output)

    log(f"untrained baseline; {len(rows)} methods to run: {', '.join(m.key for m in rows)}")
    baseline = fresh_encoder(args.max_seq_length, args.seed)
    tick = time.perf_counter()
    results["untrained"] = {
        "sts": sts_scores(baseline, tests),
        "dev": round(dev(baseline)["spearman"], 2),
        "cranfield_ndcg@10": round(cranfield(baseline)["ndcg@10"], 2),
        "cranfield_ndcg@10_issue_reference": UNTRAINED_CRANFIELD_NDCG10,
        "eval_wall_s": round(time.perf_counter() - tick, 1),
    }
    log(f"untrained: {results['untrained']}")
    _common.write_results(results, args.output)

    for method in rows:
        if args.time_budget_s and time.perf_counter() - started > args.time_budget_s:
            # Out of time: say so in the results rather than leave the method out silently.
            results["methods"][method.key] = {"task": method.task, "name": method.name, "library": method.library,
                                              "skipped": f"time budget of {args.time_budget_s} s spent"}
            log(f"{method.key} skipped: time budget spent")
            continue
        log(f"{method.key} ({method.library})")
        examples, kind = training_examples(method.task, args.data_dir, row_limit)
        length = args.doc_seq_length if method.task == "cranfield" else args.max_seq_length
        encoder = fresh_encoder(length, args.seed)
        selection = None if method.task == "cranfield" else dev
        settings = embedkit.FitSettings(
            output_dir=work / method.key.replace("/", "__"),
            batch_size=args.batch_size,
            lr=args.lr,
            max_steps=args.steps,
            warmup_ratio=0.1,
            seed=args.seed,
            save_steps=10**9,  # no mid-run checkpoints: the run is short and disk writes cost time
            log_steps=1,
            eval_steps=args.eval_every,
            resume=False,
            show_progress=False,
        )
        row: dict[str, Any] = {"task": method.task, "name": method.name, "library": method.library,
                               "loss": method.loss or method.st_loss, "params": method.params, "steps": args.steps}
        tick = time.perf_counter()
        try:
            if method.st_loss:
                trained = train_sentence_transformers(method, encoder, examples, settings, selection)
            else:
                trained = train_embedkit(method, encoder, examples, kind, settings, selection)
            row["train_wall_s"] = round(time.perf_counter() - tick, 1)
            row["curve"] = read_curve(Path(settings.output_dir) / "log.jsonl")
            if row["curve"]["dev"]:
                row["dev_first"], row["dev_final"] = row["curve"]["dev"][0], row["curve"]["dev"][-1]
                best = max(range(len(row["curve"]["dev"])), key=row["curve"]["dev"].__getitem__)
                row["dev_best"], row["best_step"] = row["curve"]["dev"][best], row["curve"]["dev_step"][best]
            tick = time.perf_counter()
            if method.task == "cranfield":
                metrics = cranfield(trained)
                row["cranfield"] = {k: round(v, 2) for k, v in metrics.items()}
                row["delta_ndcg@10_vs_untrained"] = round(metrics["ndcg@10"] - results["untrained"]["cranfield_ndcg@10"], 2)
            else:
                row["sts"] = sts_scores(trained, tests)
                row["delta_avg_vs_untrained"] = round(row["sts"]["avg"] - results["untrained"]["sts"]["avg"], 2)
            row["eval_wall_s"] = round(time.perf_counter() - tick, 1)
        except Exception as error:  # one failing method must not lose the others' results
            row["error"] = f"{type(error).__name__}: {error}"
            log(f"  FAILED: {row['error']}")
        results["methods"][method.key] = row
        log(f"  {json.dumps({k: v for k, v in row.items() if k not in ('curve', 'params')})}")
        shutil.rmtree(settings.output_dir, ignore_errors=True)  # best/ and final/ are ~90 MB each
        results["total_wall_s"] = round(time.perf_counter() - started, 1)
        results["notes"] = run_notes(args, results, rows)
        _common.write_results(results, args.output)
        plot_curves(results, args.output.with_name(args.output.stem + "_curves.png"))

    results["total_wall_s"] = round(time.perf_counter() - started, 1)
    results["notes"] = run_notes(args, results, rows)
    _common.write_results(results, args.output)
    plot_curves(results, args.output.with_name(args.output.stem + "_curves.png"))
    shutil.rmtree(work, ignore_errors=True)
    log(f"done in {results['total_wall_s']:.0f} s -> {args.output}")


if __name__ == "__main__":
    main()
