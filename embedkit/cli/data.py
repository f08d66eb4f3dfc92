"""``embedkit split-queries``: cut a BEIR folder's judged queries into train, dev and test splits."""

from __future__ import annotations

import argparse
from pathlib import Path

from embedkit.cli.options import parse_assignments, print_json


def parse_fractions(text: str) -> dict[str, float]:
    """``"train=0.8,dev=0.1,test=0.1"`` -> ``{"train": 0.8, "dev": 0.1, "test": 0.1}``."""
    return parse_assignments(text.split(","), "splits look like train=0.8,dev=0.1,test=0.1")


def cmd_split_queries(args: argparse.Namespace) -> int:
    from embedkit.data import split_queries

    counts = split_queries(args.data, args.out, parse_fractions(args.splits), seed=args.seed, source_split=args.split)
    if args.json:
        print_json({"folder": str(args.out), "queries": counts, "seed": args.seed})
    else:
        listed = ", ".join(f"{name} {count}" for name, count in counts.items())
        print(f"split the {sum(counts.values())} queries judged in {args.split} into {listed} (seed {args.seed}): "
              f"{args.out}/qrels/")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``split-queries``."""
    parser = commands.add_parser(
        "split-queries",
        help="split a BEIR folder's judged queries into train/dev/test qrels by a seed",
        description="Every query the --split qrels judge goes, with all of its judgements, to one of the new "
        "splits. The new folder holds the qrels files and links (or copies) of corpus.jsonl and queries.jsonl.",
    )
    parser.add_argument("--data", required=True, type=Path, help="a BEIR folder")
    parser.add_argument("--out", required=True, type=Path, help="the folder to write (may be --data itself)")
    parser.add_argument("--splits", default="train=0.7,dev=0.1,test=0.2",
                        help="names and shares of the new splits (default: train=0.7,dev=0.1,test=0.2)")
    parser.add_argument("--split", default="test", help="the qrels split to cut (default: test)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default: 0)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=cmd_split_queries)
