"""The ``embedkit`` command line: train | encode | eval | index | search | mine | select-pairs | losses.

The index, evaluation and preference commands live in ``cli_index``, ``cli_eval`` and ``cli_preference``.

User errors (bad data, unknown names, bad recipes) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embedkit.errors import EmbedkitError

EXIT_USAGE = 2


def _quiet_libraries() -> None:
    """Hide the per-file progress bars of model loading; embedkit shows its own for long work."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    from embedkit.encoders import DEFAULT_MODEL
    from embedkit.precision import PRECISIONS

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="compute precision (default: auto)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def _load(args: argparse.Namespace):
    from embedkit.encoders import load_encoder

    return load_encoder(args.model, device=args.device, precision=args.precision)


# -- commands ------------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from embedkit import distributed
    from embedkit.config import load_config
    from embedkit.runner import run_training

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
        _print_json(summary)
        return 0
    print(f"trained {result.steps} steps; models in {result.output_dir}/best and {result.output_dir}/final")
    if result.first_eval is not None and result.last_eval is not None:
        before, after = result.first_eval[result.metric], result.last_eval[result.metric]
        print(f"dev {result.metric}: {before:.2f} before, {after:.2f} after "
              f"(best {result.best_score:.2f} at step {result.best_step})")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from embedkit import distributed
    from embedkit.data import read_rows
    from embedkit.errors import DataError
    from embedkit.index.sharded import encode_sharded

    texts = []
    for line, row in read_rows(args.input, format=args.format):
        text = row.get(args.column)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"column {args.column!r} is missing or empty", str(args.input), line)
        texts.append(text)
    distributed.init_from_environment()  # under torchrun: each process embeds a shard, rank 0 writes them all
    embeddings = encode_sharded(_load(args), texts, batch_size=args.batch_size, normalize=args.normalize,
                                show_progress=not args.json)
    if embeddings is None:
        return 0
    np.save(args.output, embeddings)
    if args.json:
        _print_json({"output": str(args.output), "shape": list(embeddings.shape)})
    else:
        print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} float32 embeddings to {args.output}")
    return 0


def cmd_eval_sts(args: argparse.Namespace) -> int:
    from embedkit.eval import STSEvaluator

    evaluator = STSEvaluator(args.data, batch_size=args.batch_size)
    results = evaluator(_load(args))
    if args.json:
        _print_json({"model": args.model, "task": "sts", "data": str(args.data), "metrics": results})
    else:
        for name, value in results.items():
            print(f"{name:<40} {value:7.2f}")
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
        _print_json(entries)
        return 0
    for entry in entries:
        params = ", ".join(f"{k}={v!r}" for k, v in entry["parameters"].items() if k != "steps")
        print(f"{entry['name']:<14} {entry['summary']}")
        print(f"{'':<14} data: {', '.join(entry['kinds'])}; parameters: {params}")
        print(f"{'':<14} {entry['reference']}")
    return 0


# -- parser --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedkit", description="Contrastive text embeddings: train, encode, evaluate.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train an encoder from a TOML recipe")
    train.add_argument("recipe", type=Path, help="the TOML recipe")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a recipe value")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.set_defaults(func=cmd_train)

    encode = commands.add_parser("encode", help="embed the texts of a file into a .npy array")
    _add_model_options(encode)
    encode.add_argument("--input", required=True, help="txt (one text per line), jsonl, csv, tsv or parquet")
    encode.add_argument("--output", required=True, type=Path, help="the .npy file to write")
    encode.add_argument("--column", default="text", help="the text column of a table (default: text)")
    encode.add_argument("--format", default=None, help="input format, if the suffix does not say")
    encode.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    encode.add_argument("--json", action="store_true", help="print the result as JSON")
    encode.set_defaults(func=cmd_encode)

    evaluate = commands.add_parser("eval", help="evaluate an encoder")
    tasks = evaluate.add_subparsers(dest="task", required=True, metavar="TASK")
    sts = tasks.add_parser("sts", help="Spearman x100 of cosine similarity on an STS file or folder")
    _add_model_options(sts)
    sts.add_argument("--data", required=True, type=Path, help="a scored file or a folder of them")
    sts.add_argument("--json", action="store_true", help="print machine-readable results")
    sts.set_defaults(func=cmd_eval_sts)

    from embedkit.cli_eval import add_eval_tasks
    from embedkit.cli_index import register as register_index_commands
    from embedkit.cli_preference import add_eval_preference
    from embedkit.cli_preference import register as register_preference_commands

    add_eval_tasks(tasks)
    add_eval_preference(tasks)
    register_index_commands(commands)
    register_preference_commands(commands)

    losses = commands.add_parser("losses", help="list the registered losses")
    losses.add_argument("--json", action="store_true", help="print as JSON")
    losses.set_defaults(func=cmd_losses)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _quiet_libraries()
        return args.func(args)
    except EmbedkitError as error:
        print(f"embedkit: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("embedkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
