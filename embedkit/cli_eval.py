"""Command-line evaluation tasks: ``embedkit eval retrieval | mteb | geometry | all``.

:func:`add_eval_tasks` adds them under ``embedkit eval``; it takes the sub-parser collection that
:func:`embedkit.cli.build_parser` makes for the ``eval`` command.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from embedkit.cli import _add_model_options, _load, _print_json
from embedkit.errors import ConfigError


def _require(module: str, purpose: str) -> None:
    """A one-line error, not an ImportError traceback, when an optional dependency is missing."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{purpose} needs the {module} package: pip install 'embedkit[eval]'")


def _cutoffs(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _print_metrics(results: dict[str, float]) -> None:
    for name, value in results.items():
        print(f"{name:<40} {value:8.2f}")


def add_eval_tasks(tasks: argparse._SubParsersAction) -> None:
    """Add ``retrieval``, ``mteb``, ``geometry`` and ``all`` under ``embedkit eval``."""
    from embedkit.eval.mteb_local import SOURCES
    from embedkit.eval.retrieval import GAINS

    retrieval = tasks.add_parser(
        "retrieval",
        help="nDCG@10, MRR@10, recall@k and MAP on a BEIR folder, searched through an index",
        description="Documents are embedded as title + ' ' + text; the queries of the split's qrels are searched "
        "through the index spec given; metrics come from trec_eval (pytrec_eval), x100.",
    )
    _add_model_options(retrieval)
    retrieval.add_argument("--data", required=True, type=Path,
                           help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    retrieval.add_argument("--split", default="test", help="the qrels split (default: test)")
    retrieval.add_argument("--index", default="torch",
                           help="index spec: torch, faiss:Flat, faiss:HNSW32, ... (default: torch)")
    retrieval.add_argument("--k", type=int, default=100,
                           help="documents retrieved per query; MAP is over them (default: 100)")
    retrieval.add_argument("--recall-at", type=_cutoffs, default=(1, 10, 100),
                           help="recall cutoffs (default: 1,10,100)")
    retrieval.add_argument("--gain", choices=GAINS, default="exponential",
                           help="nDCG gain of graded judgements: 2^r - 1 (exponential, default) or r (linear, as MTEB)")
    retrieval.add_argument("--json", action="store_true", help="print machine-readable results")
    retrieval.set_defaults(func=cmd_eval_retrieval)

    mteb = tasks.add_parser(
        "mteb",
        help="MTEB tasks from the hub, or local tasks built from files when offline",
        description="Each name is an mteb task, a task declared in --local-tasks, or a path to task files. With "
        "--source auto, registered tasks run from the hub when it answers and from their local declaration "
        "otherwise. Results are written in mteb's format under --out.",
    )
    _add_model_options(mteb)
    mteb.add_argument("--tasks", required=True, type=_names, help="comma-separated task names or paths")
    mteb.add_argument("--local-tasks", type=Path, default=None, help="a TOML file declaring local tasks ([tasks.NAME])")
    mteb.add_argument("--source", choices=SOURCES, default="auto", help="where tasks come from (default: auto)")
    mteb.add_argument("--out", type=Path, default=Path("mteb-results"), help="results folder (default: mteb-results)")
    mteb.add_argument("--json", action="store_true", help="print machine-readable results")
    mteb.set_defaults(func=cmd_eval_mteb)

    geometry = tasks.add_parser(
        "geometry",
        help="alignment, uniformity (Wang and Isola, 2020) and anisotropy of the embeddings",
        description="Alignment on the positive pairs (scored pairs at or above --threshold, or every row of a pairs "
        "file); uniformity and anisotropy on a sample of sentences (--sentences, default: those of --data).",
    )
    _add_model_options(geometry)
    geometry.add_argument("--data", required=True, type=Path, help="a scored (STS) or pairs file")
    geometry.add_argument("--sentences", type=Path, default=None, help="sentences for uniformity and anisotropy")
    geometry.add_argument("--threshold", type=float, default=4.0, help="lowest score of a positive pair (default: 4)")
    geometry.add_argument("--max-sentences", type=int, default=2000, help="sentences sampled (default: 2000)")
    geometry.add_argument("--json", action="store_true", help="print machine-readable results")
    geometry.set_defaults(func=cmd_eval_geometry)

    report = tasks.add_parser(
        "all",
        help="run a suite of evaluations and write report.json, report.md and plots",
        description="Runs the STS, retrieval, preference, geometry and MTEB evaluations a suite TOML declares, for "
        "the model and every --compare model side by side. A training run folder as --model (or --log) adds loss "
        "and dev-score curves.",
    )
    _add_model_options(report)
    report.add_argument("--suite", required=True, type=Path, help="the suite TOML")
    report.add_argument("--compare", nargs="+", default=[], metavar="MODEL", help="more models, side by side")
    report.add_argument("--log", type=Path, default=None, help="the training log.jsonl of --model")
    report.add_argument("--out", required=True, type=Path, help="the report folder")
    report.add_argument("--json", action="store_true", help="print report.json")
    report.set_defaults(func=cmd_eval_all)


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from embedkit.eval.retrieval import RetrievalEvaluator

    evaluator = RetrievalEvaluator(
        args.data, split=args.split, index_spec=args.index, k=args.k, recall_at=args.recall_at, gain=args.gain,
        batch_size=args.batch_size,
    )
    results = evaluator(_load(args))
    if args.json:
        _print_json({"model": args.model, "task": "retrieval", "data": str(args.data), "split": args.split,
                     "index": args.index, "queries": len(evaluator.data.query_ids), "metrics": results})
    else:
        _print_metrics(results)
    return 0


def cmd_eval_mteb(args: argparse.Namespace) -> int:
    _require("mteb", "embedkit eval mteb")
    from embedkit.eval.mteb_adapter import run_mteb

    outcomes = run_mteb(
        _load(args), args.tasks, local_tasks=args.local_tasks, task_source=args.source, model_source=args.model,
        output_dir=args.out, batch_size=args.batch_size,
    )
    if args.json:
        _print_json({"model": args.model, "task": "mteb", "results": [vars(o) for o in outcomes]})
        return 0
    for o in outcomes:
        print(f"{o.task:<30} {o.source:<6} {o.main_score_name:<18} {o.main_score:8.2f}")
    print(f"results in {args.out}")
    return 0


def cmd_eval_geometry(args: argparse.Namespace) -> int:
    from embedkit.eval.geometry import GeometryEvaluator

    evaluator = GeometryEvaluator(
        args.data, sentences=args.sentences, positive_threshold=args.threshold, max_sentences=args.max_sentences,
        batch_size=args.batch_size,
    )
    results = evaluator(_load(args))
    if args.json:
        _print_json({"model": args.model, "task": "geometry", "data": str(args.data),
                     "positive_pairs": len(evaluator.positive_pairs), "sentences": len(evaluator.sample),
                     "metrics": results})
    else:
        for name, value in results.items():
            print(f"{name:<40} {value:8.4f}")
    return 0


def cmd_eval_all(args: argparse.Namespace) -> int:
    _require("matplotlib", "the report's plots")
    from embedkit.encoders import load_encoder
    from embedkit.eval.report import run_report

    document = run_report(
        [args.model, *args.compare], args.suite, args.out, log=args.log, batch_size=args.batch_size,
        load=lambda model: load_encoder(model, device=args.device, precision=args.precision),
    )
    if args.json:
        _print_json(document)
    else:
        print((args.out / "report.md").read_text())
        print(f"report in {args.out}: report.json, report.md, {', '.join(document['plots']) or 'no plots'}")
    return 0
