"""Command-line commands for preference data: ``embedkit eval preference`` and ``embedkit select-pairs``.

:func:`add_eval_preference` adds the ``preference`` task under ``embedkit eval``; :func:`register` adds the
``select-pairs`` command. Both take the sub-parser collections that :func:`embedkit.cli.build_parser` makes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from embedkit.cli import _add_model_options, _load, _print_json


def add_eval_preference(tasks: argparse._SubParsersAction) -> None:
    """Add ``embedkit eval preference --model M --data F [--mode similarity|reward] [--json]``."""
    from embedkit.eval.preference import MODES, PROMPT_TRUNCATION

    parser = tasks.add_parser(
        "preference",
        help="preference accuracy (chosen above rejected), mean margin and calibration",
        description="Similarity mode: cos(prompt, chosen) > cos(prompt, rejected) with an encoder. Reward mode: "
        "r(chosen) > r(rejected) with an embedkit reward model or a Hugging Face sequence-classification model.",
    )
    _add_model_options(parser)
    parser.add_argument("--data", required=True, type=Path, help="a preference file (prompt, chosen, rejected)")
    parser.add_argument("--mode", choices=MODES, default="similarity", help="default: similarity")
    parser.add_argument(
        "--prompt-truncation", choices=PROMPT_TRUNCATION, default="left",
        help="similarity mode: keep the end (left, default) or the start (right) of a prompt that is too long",
    )
    parser.add_argument("--temperature", type=float, default=0.05,
                        help="similarity mode: temperature turning cosine gaps into probabilities (default: 0.05)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N rows only")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    parser.set_defaults(func=cmd_eval_preference)


def cmd_eval_preference(args: argparse.Namespace) -> int:
    from embedkit.eval.preference import PreferenceEvaluator, load_reward_scorer

    evaluator = PreferenceEvaluator(
        args.data,
        mode=args.mode,
        batch_size=args.batch_size,
        temperature=args.temperature,
        prompt_truncation=args.prompt_truncation,
        limit=args.limit,
    )
    if args.mode == "reward":
        model = load_reward_scorer(args.model, device=args.device, precision=args.precision)
    else:
        model = _load(args)
    report = evaluator.report(model)
    if args.json:
        _print_json({"model": args.model, "task": "preference", "data": str(args.data), **report.to_dict()})
        return 0
    print(f"{'accuracy':<14} {report.accuracy:7.2f}  (95% CI {report.accuracy_low:.2f} to {report.accuracy_high:.2f}, "
          f"n = {report.n}, ties = {report.ties})")
    print(f"{'mean_margin':<14} {report.mean_margin:7.4f}")
    print(f"{'ece':<14} {report.ece:7.2f}")
    print(f"{'log_loss':<14} {report.log_loss:7.4f}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``embedkit select-pairs --model M --input responses.jsonl --output pairs.jsonl``."""
    from embedkit.preference.select import STRATEGIES

    parser = commands.add_parser(
        "select-pairs",
        help="choose response pairs to label by embedding dissimilarity (REAL)",
        description="Reads rows {prompt, responses: [...]} and writes {prompt, response_a, response_b, similarity} "
        "rows: per prompt, the pairs whose response embeddings are least similar (or most similar, or random).",
    )
    _add_model_options(parser)
    parser.add_argument("--input", required=True, help="rows with 'prompt' and a 'responses' list (jsonl, json, ...)")
    parser.add_argument("--output", required=True, type=Path, help="the jsonl file to write")
    parser.add_argument("--strategy", choices=STRATEGIES, default="dissimilar", help="default: dissimilar")
    parser.add_argument("--per-prompt", type=int, default=1, help="pairs per prompt (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    parser.add_argument("--format", default=None, help="input format, if the suffix does not say")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=cmd_select_pairs)


def cmd_select_pairs(args: argparse.Namespace) -> int:
    from embedkit.fsutil import atomic_write_bytes
    from embedkit.preference.select import read_response_groups, select_pairs

    groups = read_response_groups(args.input, format=args.format)
    pairs = select_pairs(_load(args), groups, strategy=args.strategy, per_prompt=args.per_prompt, seed=args.seed,
                         batch_size=args.batch_size)
    lines = [
        json.dumps({"prompt": pair.prompt, "response_a": pair.a, "response_b": pair.b,
                    "similarity": pair.similarity, "strategy": args.strategy}, ensure_ascii=False)
        for pair in pairs
    ]
    atomic_write_bytes(args.output, "".join(line + "\n" for line in lines).encode("utf-8"))
    if args.json:
        _print_json({"output": str(args.output), "prompts": len(groups), "pairs": len(pairs)})
    else:
        print(f"wrote {len(pairs)} pairs for {len(groups)} prompts to {args.output}")
    return 0
