"""``embedkit mine`` (hard negatives for pairs) and ``embedkit select-pairs`` (response pairs to label)."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from embedkit.cli.options import add_model_options, load_model, print_json
from embedkit.errors import ConfigError

if TYPE_CHECKING:  # the CLI imports torch-backed modules only when a command runs
    from embedkit.losses.steps import FilterSpec


def parse_range(text: str) -> FilterSpec:
    """``"10:100"`` -> ``{"name": "rank-window", "start": 10, "end": 100}``; the step checks the bounds."""
    start, _, end = text.partition(":")  # without a colon end is "", which int() refuses
    try:
        return {"name": "rank-window", "start": int(start), "end": int(end)}
    except ValueError:
        raise ConfigError(f"a rank range looks like 10:100, got {text!r}") from None


def parse_margin(text: str) -> FilterSpec | None:
    """``"relative:0.05"`` -> ``{"name": "margin", "mode": "relative", "margin": 0.05}``; ``"none"`` -> ``None``.

    Only the shape ``MODE:VALUE`` is read here; the margin step itself judges the mode and the value, so a bad
    mode gets the same message as from Python or a recipe.
    """
    if text == "none":
        return None
    mode, _, value = text.partition(":")  # without a colon value is "", which float() refuses
    try:
        return {"name": "margin", "mode": mode, "margin": float(value)}
    except ValueError:
        raise ConfigError(f"a margin looks like relative:0.05 or absolute:0.1 (or none), got {text!r}") from None


def mining_filters(range_text: str, margin_text: str, max_score: float | None) -> list[FilterSpec]:
    """The step tables of ``--margin``, ``--max-score`` and ``--range``, in the order mining has always run
    them: the rank window counts what the margin and the ceiling left."""
    margin = parse_margin(margin_text)
    ceiling = None if max_score is None else {"name": "ceiling", "max_score": max_score}
    return [spec for spec in (margin, ceiling, parse_range(range_text)) if spec is not None]


def cmd_mine(args: argparse.Namespace) -> int:
    from embedkit.data import read_examples
    from embedkit.encoders import load_encoder
    from embedkit.fsutil import atomic_write_bytes
    from embedkit.index import Index
    from embedkit.mining import MiningWarning, mine_hard_negatives

    if args.corpus is not None and args.index is not None:
        raise ConfigError("give --corpus or --index, not both")
    encoder = load_model(args)
    corpus = Index.load(args.index, encoder=encoder) if args.index is not None else args.corpus
    guide = None if args.guide is None else load_encoder(
        args.guide, device=args.device, precision=args.precision, backend=args.backend
    )
    pairs = read_examples(args.pairs, format=args.format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MiningWarning)  # the summary below says how many pairs were left out
        triplets = mine_hard_negatives(
            encoder,
            pairs,
            corpus,
            num_negatives=args.negatives,
            steps=mining_filters(args.range, args.margin, args.max_score),
            guide=guide,
            sampling=args.sampling,
            seed=args.seed,
            spec=args.spec,
            batch_size=args.batch_size,
            show_progress=not args.json,
        )
    lines = [
        json.dumps(
            {"anchor": row.anchor, "positive": row.positive, "negatives": list(row.negatives)}, ensure_ascii=False
        )
        for row in triplets
    ]
    atomic_write_bytes(args.out, "".join(line + "\n" for line in lines).encode("utf-8"))
    summary = {
        "output": str(args.out),
        "pairs": len(pairs),
        "triplets": len(triplets),
        "left_out": len(pairs) - len(triplets),
        "negatives": args.negatives,
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"wrote {len(triplets)} triplets with {args.negatives} negatives each to {args.out} "
            f"({summary['left_out']} of {len(pairs)} pairs left out: too few negatives passed the filters)"
        )
    return 0


def cmd_select_pairs(args: argparse.Namespace) -> int:
    from embedkit.fsutil import atomic_write_bytes
    from embedkit.mining.response_pairs import read_response_groups, select_pairs

    groups = read_response_groups(args.input, format=args.format)
    pairs = select_pairs(load_model(args), groups, strategy=args.strategy, per_prompt=args.per_prompt, seed=args.seed,
                         batch_size=args.batch_size)
    lines = [
        json.dumps({"prompt": pair.prompt, "response_a": pair.a, "response_b": pair.b,
                    "similarity": pair.similarity, "strategy": args.strategy}, ensure_ascii=False)
        for pair in pairs
    ]
    atomic_write_bytes(args.output, "".join(line + "\n" for line in lines).encode("utf-8"))
    if args.json:
        print_json({"output": str(args.output), "prompts": len(groups), "pairs": len(pairs)})
    else:
        print(f"wrote {len(pairs)} pairs for {len(groups)} prompts to {args.output}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``mine`` and ``select-pairs``."""
    mine = commands.add_parser("mine", help="mine hard negatives for (anchor, positive) pairs into triplets")
    add_model_options(mine)
    mine.add_argument("--pairs", required=True, help="a file of pairs (anchor, positive) or triplets")
    mine.add_argument("--format", default=None, help="pairs file format, if the suffix does not say")
    mine.add_argument("--corpus", default=None, help="documents to mine from (default: the distinct positives)")
    mine.add_argument("--index", type=Path, default=None, help="an index folder to mine from instead of --corpus")
    mine.add_argument("--out", required=True, type=Path, help="the triplets file (jsonl) to write")
    mine.add_argument("--negatives", type=int, default=5, help="negatives per pair (default: 5)")
    mine.add_argument(
        "--range", default="10:100", help="rank window START:END among the filtered candidates (default: 10:100)"
    )
    mine.add_argument(
        "--margin",
        default="relative:0.05",
        help="relative:M, absolute:M or none: drop candidates scoring within M of the positive "
        "(default: relative:0.05)",
    )
    mine.add_argument("--max-score", type=float, default=None, help="drop candidates scoring above this")
    mine.add_argument(
        "--guide", default=None, help="a guide model whose scores the margin and ceiling judge (GISTEmbed)"
    )
    mine.add_argument("--sampling", choices=("top", "random"), default="top", help="the hardest or a random sample")
    mine.add_argument("--seed", type=int, default=0, help="seed of random sampling")
    mine.add_argument("--spec", default="torch",
                      help="index spec for --corpus (default: torch); with bm25 or hybrid:..., the model rescores "
                      "the candidates they retrieve")
    mine.add_argument("--json", action="store_true", help="print the summary as JSON")
    mine.set_defaults(func=cmd_mine)

    from embedkit.mining.response_pairs import STRATEGIES

    parser = commands.add_parser(
        "select-pairs",
        help="choose response pairs to label by embedding dissimilarity (REAL)",
        description="Reads rows {prompt, responses: [...]} and writes {prompt, response_a, response_b, similarity} "
        "rows: per prompt, the pairs whose response embeddings are least similar (or most similar, or random).",
    )
    add_model_options(parser)
    parser.add_argument("--input", required=True, help="rows with 'prompt' and a 'responses' list (jsonl, json, ...)")
    parser.add_argument("--output", required=True, type=Path, help="the jsonl file to write")
    parser.add_argument("--strategy", choices=STRATEGIES, default="dissimilar", help="default: dissimilar")
    parser.add_argument("--per-prompt", type=int, default=1, help="pairs per prompt (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    parser.add_argument("--format", default=None, help="input format, if the suffix does not say")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=cmd_select_pairs)
