"""``embedkit train RECIPE``, ``embedkit adapt`` and ``embedkit losses``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from embedkit.cli.options import print_json

if TYPE_CHECKING:  # the CLI imports torch-backed modules only when a command runs
    from embedkit.losses import LossSpec
    from embedkit.training.fit import FitResult


def cmd_train(args: argparse.Namespace) -> int:
    from embedkit import distributed
    from embedkit.eval.scale import scale_fields
    from embedkit.training.recipe import load_config, run_training

    config = load_config(args.recipe, args.set)
    distributed.init_from_environment()  # under torchrun: one process per device, gradients averaged
    result = run_training(config, show_progress=not args.json, overwrite=args.overwrite)
    if not distributed.is_main_process():
        return 0
    if args.json:
        print_json({
            "output_dir": str(result.output_dir),
            "steps": result.steps,
            "trained_steps": result.steps - result.start_step,
            "best_score": result.best_score,
            "best_step": result.best_step,
            "best_interpolation": result.best_interpolation,
            "metric": result.metric,
            **scale_fields(result.last_eval or {}),  # a recipe's evaluators are embedkit's
            "first_eval": result.first_eval,
            "last_eval": result.last_eval,
            "models": [str(folder) for folder in _models(result)],
        })
        return 0
    for line in summary_lines(result):
        print(line)
    return 0


def _models(result: FitResult) -> list[Path]:
    return [result.output_dir / name for name in ("best", "final") if (result.output_dir / name).is_dir()]


def summary_lines(result: FitResult) -> list[str]:
    """What a training run did, for people: steps, the model folders that exist, dev scores."""
    trained = result.steps - result.start_step
    if trained == 0:
        lines = [f"nothing to train: the run in {result.output_dir} had finished its {result.steps} steps"]
    elif result.start_step:
        lines = [f"trained {trained} steps, resuming at step {result.start_step} of {result.steps}"]
    else:
        lines = [f"trained {trained} steps"]
    models = _models(result)
    saved = " and ".join(map(str, models))
    lines.append(f"models in {saved}" if models else f"no model was saved in {result.output_dir}")
    if result.metric is not None and result.first_eval is not None and result.last_eval is not None:
        chosen = (f"step {result.best_step}" if result.best_interpolation is None
                  else f"interpolation {result.best_interpolation} of the start model and step {result.best_step}")
        lines.append(
            f"dev {result.metric}: {result.first_eval[result.metric]:.2f} before, "
            f"{result.last_eval[result.metric]:.2f} after (best {result.best_score:.2f} at {chosen})"
        )
    return lines


def cmd_adapt(args: argparse.Namespace) -> int:
    from embedkit.eval.scale import scale_fields
    from embedkit.training.adapt import adapt

    outcome = adapt(args.data, args.out, args.model, seed=args.seed, overrides=args.set, overwrite=args.overwrite,
                    show_progress=not args.json)
    run = outcome.run
    if args.json:
        print_json({"output_dir": str(run.output_dir), "data": str(outcome.data), "metric": run.metric,
                    **scale_fields(run.last_eval or {}), "dev_before": run.first_eval, "dev_best": run.best_score,
                    "best_step": run.best_step, "best_interpolation": run.best_interpolation,
                    "test_before": outcome.test_before, "test_after": outcome.test_after})
        return 0
    for line in summary_lines(run):
        print(line)
    if outcome.test_before is not None and outcome.test_after is not None:
        for metric in ("recall@100", "ndcg@10"):
            print(f"test {metric} on held-out queries: {outcome.test_before[metric]:.2f} before, "
                  f"{outcome.test_after[metric]:.2f} after")
    return 0


def _defined_in(spec: LossSpec) -> str:
    """The module that defines a registered loss."""
    return spec.factory.__module__


def cmd_losses(args: argparse.Namespace) -> int:
    from embedkit.losses import LOSSES

    entries = []
    for name in LOSSES.names():
        spec = LOSSES.get(name)
        entries.append(
            {
                "name": name,
                "summary": spec.summary,
                "kinds": [k.value for k in spec.kinds],
                "parameters": spec.parameters(),
                "reference": spec.reference,
                "module": _defined_in(spec),
            }
        )
    if args.json:
        print_json(entries)
        return 0
    for entry in entries:
        params = ", ".join(f"{k}={v!r}" for k, v in entry["parameters"].items() if k != "steps")
        print(f"{entry['name']:<14} {entry['summary']}")
        print(f"{'':<14} data: {', '.join(entry['kinds'])}; parameters: {params}")
        print(f"{'':<14} {entry['reference']}")
        print(f"{'':<14} in {entry['module']}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``train``, ``adapt`` and ``losses``."""
    train = commands.add_parser("train", help="train an encoder from a TOML recipe")
    train.add_argument("recipe", type=Path, help="the TOML recipe")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a recipe value")
    train.add_argument("--overwrite", action="store_true",
                       help="start over when the output folder holds a run of a different recipe")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.set_defaults(func=cmd_train)

    adapt = commands.add_parser(
        "adapt",
        help="fine-tune an encoder on a BEIR folder's judged queries and report held-out before/after",
        description="Splits the judged queries (unless the folder has train and dev qrels), trains InfoNCE with hard "
        "negatives mined from the corpus by the model being trained, keeps the best of the start model, every "
        "epoch and WiSE-FT interpolations by dev nDCG@10 in OUT/best, and scores the test queries before and after.",
    )
    adapt.add_argument("--data", required=True, type=Path, help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    adapt.add_argument("--out", required=True, type=Path, help="the run folder")
    adapt.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="the model to start from")
    adapt.add_argument("--seed", type=int, default=0, help="seed of the split and of training (default: 0)")
    adapt.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a value of the adaptation recipe")
    adapt.add_argument("--overwrite", action="store_true",
                       help="start over when the output folder holds a run of a different recipe")
    adapt.add_argument("--json", action="store_true", help="print the result as JSON")
    adapt.set_defaults(func=cmd_adapt)

    losses = commands.add_parser("losses", help="list the registered losses")
    losses.add_argument("--json", action="store_true", help="print as JSON")
    losses.set_defaults(func=cmd_losses)
