"""``embedkit eval sts | retrieval | mteb | geometry | preference | all``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from embedkit.cli.options import add_model_options, add_truncate_dim, load_model, print_json
from embedkit.errors import require

if TYPE_CHECKING:
    from embedkit.types import Evaluator


def _cutoffs(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _dims(text: str) -> tuple[int, ...]:
    dims = _cutoffs(text)
    if any(dim < 1 for dim in dims):
        raise argparse.ArgumentTypeError(f"dimensions must be positive integers, got {text!r}")
    return dims


def _add_dimension_options(parser: argparse.ArgumentParser) -> None:
    """``--truncate-dim N`` or ``--dims 384,256,...`` (Matryoshka models)."""
    group = parser.add_mutually_exclusive_group()
    add_truncate_dim(group)  # type: ignore[arg-type]  # a group takes arguments as a parser does
    group.add_argument("--dims", type=_dims, default=None, metavar="D1,D2,...",
                       help="score the embeddings cut to each of these dimensions, e.g. 384,256,128,64,32 "
                       "(each text embedded once)")


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _print_metrics(results: dict[str, float]) -> None:
    for name, value in results.items():
        print(f"{name:<40} {value:8.2f}")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``eval`` and its tasks."""
    from embedkit.eval.mteb_local import SOURCES
    from embedkit.eval.retrieval import GAINS

    evaluate = commands.add_parser("eval", help="evaluate an encoder")
    tasks = evaluate.add_subparsers(dest="task", required=True, metavar="TASK")
    sts = tasks.add_parser("sts", help="Spearman x100 of cosine similarity on an STS file or folder")
    add_model_options(sts)
    _add_dimension_options(sts)
    sts.add_argument("--data", required=True, type=Path, help="a scored file or a folder of them")
    sts.add_argument("--json", action="store_true", help="print machine-readable results")
    sts.set_defaults(func=cmd_eval_sts)

    retrieval = tasks.add_parser(
        "retrieval",
        help="nDCG@10, MRR@10, recall@k and MAP on a BEIR folder, searched through an index",
        description="Documents are embedded as title + ' ' + text; the queries of the split's qrels are searched "
        "through the index spec given; metrics come from trec_eval (pytrec_eval), x100.",
    )
    add_model_options(retrieval)
    _add_dimension_options(retrieval)
    retrieval.add_argument("--data", required=True, type=Path,
                           help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    retrieval.add_argument("--split", default="test", help="the qrels split (default: test)")
    retrieval.add_argument("--index", default="torch",
                           help="index spec: torch, faiss:Flat, faiss:HNSW32, bm25, hybrid:faiss:Flat, ... "
                           "(default: torch)")
    retrieval.add_argument("--k", type=int, default=100,
                           help="documents retrieved per query; MAP is over them (default: 100)")
    retrieval.add_argument("--recall-at", type=_cutoffs, default=(1, 10, 100),
                           help="recall cutoffs (default: 1,10,100)")
    retrieval.add_argument("--gain", choices=GAINS, default="linear",
                           help="nDCG gain of graded judgements: r (linear, the default, as trec_eval, BEIR and "
                           "MTEB) or 2^r - 1 (exponential)")
    retrieval.add_argument("--json", action="store_true", help="print machine-readable results")
    retrieval.set_defaults(func=cmd_eval_retrieval)

    mteb = tasks.add_parser(
        "mteb",
        help="MTEB tasks from the hub, or local tasks built from files",
        description="Each name is an mteb task, a task declared in --local-tasks, or a path to task files. With "
        "--source auto, a task declared locally runs from its files without asking the hub, and other tasks come "
        "from the hub. Results are written in mteb's format under --out.",
    )
    add_model_options(mteb)
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
    add_model_options(geometry)
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
    add_model_options(report)
    report.add_argument("--suite", required=True, type=Path, help="the suite TOML")
    report.add_argument("--compare", nargs="+", default=[], metavar="MODEL", help="more models, side by side")
    report.add_argument("--log", type=Path, default=None, help="the training log.jsonl of --model")
    report.add_argument("--dims", type=_dims, default=(), metavar="D1,D2,...",
                        help="also score the STS and retrieval entries at each of these dimensions and plot the "
                        "curves (Matryoshka models)")
    report.add_argument("--out", required=True, type=Path, help="the report folder")
    report.add_argument("--json", action="store_true", help="print report.json")
    report.set_defaults(func=cmd_eval_all)

    _add_preference(tasks)

    scored = tasks.add_parser(
        "run",
        help="score an existing run file (TREC or embedkit JSONL) against qrels, without encoding",
        description="The same trec_eval measures as eval retrieval, over the queries the qrels judge (a judged "
        "query the run lacks scores 0), each query's results cut to its top k.",
    )
    scored.add_argument("run", type=Path, help="a TREC run (query Q0 doc rank score name) or a JSONL run")
    scored.add_argument("--qrels", required=True, type=Path, help="a qrels TSV, or a BEIR folder (with --split)")
    scored.add_argument("--split", default="test", help="the BEIR folder's qrels split (default: test)")
    scored.add_argument("--k", type=int, default=100, help="results per query scored; MAP is over them (default: 100)")
    scored.add_argument("--gain", choices=GAINS, default="linear",
                        help="nDCG gain of graded judgements (default: linear)")
    scored.add_argument("--json", action="store_true", help="print machine-readable results")
    scored.set_defaults(func=cmd_eval_run)


def _add_preference(tasks: argparse._SubParsersAction) -> None:
    """Add ``embedkit eval preference --model M --data F [--mode similarity|reward] [--json]``."""
    from embedkit.eval.preference import MODES, PROMPT_TRUNCATION

    parser = tasks.add_parser(
        "preference",
        help="preference accuracy (chosen above rejected), mean margin and calibration",
        description="Similarity mode: cos(prompt, chosen) > cos(prompt, rejected) with an encoder. Reward mode: "
        "r(chosen) > r(rejected) with an embedkit reward model or a Hugging Face sequence-classification model.",
    )
    add_model_options(parser)
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


def _metrics_by_dimension(evaluator: Evaluator, args: argparse.Namespace) -> dict[int, dict[str, float]] | None:
    """With ``--dims``, ``{dim: metrics}`` of the model's embeddings cut to each; else ``None``."""
    if args.dims is None:
        return None
    from embedkit.eval.report import dimension_curve

    return dimension_curve(evaluator, load_model(args), args.dims)


def _print_curve(curve: dict[int, dict[str, float]]) -> None:
    """One row per dimension, one column per metric."""
    names = list(next(iter(curve.values())))
    print(f"{'dims':>6} " + " ".join(f"{name:>12}" for name in names))
    for dim, metrics in curve.items():
        print(f"{dim:>6} " + " ".join(f"{metrics[name]:12.2f}" for name in names))


def cmd_eval_sts(args: argparse.Namespace) -> int:
    from embedkit.eval import STSEvaluator
    from embedkit.eval.scale import scale_fields

    evaluator = STSEvaluator(args.data, batch_size=args.batch_size)
    curve = _metrics_by_dimension(evaluator, args)
    if curve is not None:
        if args.json:
            print_json({"model": args.model, "task": "sts", "data": str(args.data),
                        "dims": {str(dim): metrics for dim, metrics in curve.items()}})
        else:
            _print_curve(curve)
        return 0
    results = evaluator(load_model(args))
    if args.json:
        print_json({"model": args.model, "task": "sts", "data": str(args.data),
                    "pairs": {name: len(examples) for name, examples in evaluator.sets.items()},
                    **scale_fields(results), "metrics": results})
    else:
        sizes = ", ".join(f"{len(examples)} pairs in {name}" for name, examples in evaluator.sets.items())
        print(f"{sizes}; Spearman x100")
        for name, value in results.items():
            print(f"{name:<40} {value:7.2f}")
    return 0


def cmd_eval_run(args: argparse.Namespace) -> int:
    from embedkit.eval.runs import read_qrels, read_run, score_run
    from embedkit.eval.scale import scale_fields

    qrels = read_qrels(args.qrels, args.split)
    results = score_run(read_run(args.run), qrels, k=args.k, gain=args.gain)
    if args.json:
        print_json({"task": "run", "run": str(args.run), "qrels": str(args.qrels), "queries": len(qrels),
                    "gain": args.gain, **scale_fields(results), "metrics": results})
    else:
        print(f"{len(qrels)} judged queries, nDCG with {args.gain} gains, x100")
        _print_metrics(results)
    return 0


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from embedkit.eval.retrieval import RetrievalEvaluator
    from embedkit.eval.scale import scale_fields

    evaluator = RetrievalEvaluator(
        args.data, split=args.split, index_spec=args.index, k=args.k, recall_at=args.recall_at, gain=args.gain,
        batch_size=args.batch_size,
    )
    curve = _metrics_by_dimension(evaluator, args)
    if curve is not None:
        if args.json:
            print_json({"model": args.model, "task": "retrieval", "data": str(args.data), "split": args.split,
                        "index": args.index, "queries": len(evaluator.data.query_ids), "gain": args.gain,
                        "scale": "x100", "dims": {str(dim): metrics for dim, metrics in curve.items()}})
        else:
            print(f"{len(evaluator.data.query_ids)} {args.split} queries, nDCG with {args.gain} gains, x100")
            _print_curve(curve)
        return 0
    results = evaluator(load_model(args))
    if args.json:
        print_json({"model": args.model, "task": "retrieval", "data": str(args.data), "split": args.split,
                     "index": args.index, "queries": len(evaluator.data.query_ids),
                     "documents": len(evaluator.data.doc_ids), "gain": args.gain, **scale_fields(results),
                     "metrics": results})
    else:
        print(f"{len(evaluator.data.query_ids)} {args.split} queries over {len(evaluator.data.doc_ids)} documents, "
              f"nDCG with {args.gain} gains, x100")
        _print_metrics(results)
    return 0


def cmd_eval_mteb(args: argparse.Namespace) -> int:
    require("mteb", "eval", "embedkit eval mteb")
    from embedkit.eval.mteb_adapter import run_mteb
    from embedkit.eval.scale import scale_fields

    outcomes = run_mteb(
        load_model(args), args.tasks, local_tasks=args.local_tasks, task_source=args.source, model_source=args.model,
        output_dir=args.out, batch_size=args.batch_size,
    )
    if args.json:
        print_json({"model": args.model, "task": "mteb", **scale_fields(()), "results": [vars(o) for o in outcomes]})
        return 0
    for o in outcomes:
        print(f"{o.task:<30} {o.source:<6} {o.main_score_name:<18} {o.main_score:8.2f}")
    print(f"results in {args.out}")
    return 0


def cmd_eval_geometry(args: argparse.Namespace) -> int:
    from embedkit.eval.geometry import GeometryEvaluator
    from embedkit.eval.scale import scale_fields

    evaluator = GeometryEvaluator(
        args.data, sentences=args.sentences, positive_threshold=args.threshold, max_sentences=args.max_sentences,
        batch_size=args.batch_size,
    )
    results = evaluator(load_model(args))
    if args.json:
        print_json({"model": args.model, "task": "geometry", "data": str(args.data),
                     "positive_pairs": len(evaluator.positive_pairs), "sentences": len(evaluator.sample),
                     **scale_fields(results), "metrics": results})
    else:
        for name, value in results.items():
            print(f"{name:<40} {value:8.4f}")
    return 0


def cmd_eval_all(args: argparse.Namespace) -> int:
    require("matplotlib", "eval", "embedkit eval all (the report's plots)")
    from embedkit.encoders import load_encoder
    from embedkit.eval.report import run_report

    document = run_report(
        [args.model, *args.compare], args.suite, args.out, log=args.log, batch_size=args.batch_size,
        load=lambda model: load_encoder(model, device=args.device, precision=args.precision, backend=args.backend),
        dims=args.dims,
    )
    if args.json:
        print_json(document)
    else:
        print((args.out / "report.md").read_text())
        print(f"report in {args.out}: report.json, report.md, {', '.join(document['plots']) or 'no plots'}")
    return 0


def cmd_eval_preference(args: argparse.Namespace) -> int:
    from embedkit.encoders.reward import load_reward_model
    from embedkit.errors import ConfigError
    from embedkit.eval.preference import PreferenceEvaluator, RewardScorer
    from embedkit.eval.scale import scale_fields
    from embedkit.types import SupportsEncode

    evaluator = PreferenceEvaluator(
        args.data,
        mode=args.mode,
        batch_size=args.batch_size,
        temperature=args.temperature,
        prompt_truncation=args.prompt_truncation,
        limit=args.limit,
    )
    model: SupportsEncode | RewardScorer
    if args.mode == "reward":
        if args.backend in ("openvino", "openvino-int8"):
            raise ConfigError(f"--mode reward runs in torch; --backend {args.backend} is for --mode similarity")
        model = load_reward_model(args.model, device=args.device, precision=args.precision)
    else:
        model = load_model(args)
    report = evaluator.report(model)
    if args.json:
        print_json({"model": args.model, "task": "preference", "data": str(args.data),
                    **scale_fields(report.metrics()), **report.to_dict()})
        return 0
    print(f"{'accuracy':<14} {report.accuracy:7.2f}  (95% CI {report.accuracy_low:.2f} to {report.accuracy_high:.2f}, "
          f"n = {report.n}, ties = {report.ties})")
    print(f"{'mean_margin':<14} {report.mean_margin:7.4f}")
    print(f"{'ece':<14} {report.ece:7.2f}")
    print(f"{'log_loss':<14} {report.log_loss:7.4f}")
    return 0
