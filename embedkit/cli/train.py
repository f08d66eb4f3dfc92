"""``embedkit train RECIPE`` and ``embedkit losses``."""

from __future__ import annotations

import argparse
from pathlib import Path

from embedkit.cli.options import print_json


def cmd_train(args: argparse.Namespace) -> int:
    from embedkit import distributed
    from embedkit.training.recipe import load_config
    from embedkit.training.recipe import run_training

    config = load_config(args.recipe, args.set)
    distributed.init_from_environment()  # under torchrun: one process per device, gradients averaged
    result = run_training(config, show_progress=not args.json)
    if not distributed.is_main_process():
        return 0
    summary = {
        "output_dir": str(result.output_dir),
        "steps": result.steps,
        "best_score": result.best_score,
        "best_step": result.best_step,
        "first_eval": result.first_eval,
        "last_eval": result.last_eval,
    }
    if args.json:
        print_json(summary)
        return 0
    print(f"trained {result.steps} steps; models in {result.output_dir}/best and {result.output_dir}/final")
    if result.first_eval is not None and result.last_eval is not None:
        before, after = result.first_eval[result.metric], result.last_eval[result.metric]
        print(f"dev {result.metric}: {before:.2f} before, {after:.2f} after "
              f"(best {result.best_score:.2f} at step {result.best_step})")
    return 0


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
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``losses``."""
    train = commands.add_parser("train", help="train an encoder from a TOML recipe")
    train.add_argument("recipe", type=Path, help="the TOML recipe")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a recipe value")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.set_defaults(func=cmd_train)

    losses = commands.add_parser("losses", help="list the registered losses")
    losses.add_argument("--json", action="store_true", help="print as JSON")
    losses.set_defaults(func=cmd_losses)
