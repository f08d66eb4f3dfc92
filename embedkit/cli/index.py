"""``embedkit index build | info | add | remove`` and ``embedkit search``::

    embedkit index build --model M --corpus corpus.jsonl --out idx/ --spec faiss:HNSW32 [--metric cosine]
                         [--target-recall 0.95|off] [--overwrite]
    embedkit index build --corpus corpus.jsonl --out bm25/ --spec bm25              (no model: BM25 alone)
    embedkit index build --model M --corpus corpus.jsonl --out hybrid/ --spec hybrid:faiss:Flat
    embedkit index info idx/
    embedkit index add idx/ --corpus more.jsonl [--lock-timeout 600]
    embedkit index remove idx/ --ids ids.txt
    embedkit search idx/ "how do boundary layers behave at high speed" -k 10
    embedkit search idx/ --queries queries.jsonl -k 100 --output run.jsonl

Documents get the model's document prompt (``build --prompt-name/--prompt`` for another), which the index records
and ``add`` uses again; queries get the model's query prompt (``search --prompt-name/--prompt`` for another).

``build`` refuses an ``--out`` that holds an index unless ``--overwrite`` is given; ``build``, ``add`` and
``remove`` hold the index's writers' lock from load to save, so concurrent runs queue (each waits up to
``--lock-timeout`` seconds) and none loses another's documents.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedkit.cli.options import (
    add_backend_option,
    add_model_options,
    add_prompt_options,
    add_truncate_dim,
    load_model,
    parse_assignments,
    print_json,
)
from embedkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from embedkit.encoders import Encoder
    from embedkit.index import Corpus, Document, Index

TEXT_WIDTH = 100  # characters of a result's text shown by `search`


def _add_encoder_options(parser: argparse.ArgumentParser) -> None:
    """Encoder options for commands on an existing index: the model defaults to the one that built it."""
    from embedkit.precision import PRECISIONS

    parser.add_argument("--model", default=None, help="model name or folder (default: the model that built the index)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="compute precision (default: auto)")
    add_backend_option(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size")
    parser.add_argument("--device", default=None, help="encoder device: cpu, cuda, ... (default: cuda if available)")


def _add_index_device(parser: argparse.ArgumentParser) -> None:
    from embedkit.index.spec import DEVICES

    parser.add_argument(
        "--index-device",
        default="auto",
        choices=DEVICES,
        help="where faiss indexes search: auto (the GPU when faiss sees one), gpu or cpu",
    )


def _add_corpus_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="jsonl/csv/tsv/parquet/txt file, or a BEIR folder")
    parser.add_argument(
        "--allow-blank",
        action="store_true",
        help="index documents whose text is blank (as some benchmark collections hold) instead of refusing them",
    )


def _add_lock_timeout(parser: argparse.ArgumentParser) -> None:
    from embedkit.index.folder import DEFAULT_LOCK_TIMEOUT

    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=DEFAULT_LOCK_TIMEOUT,
        metavar="SECONDS",
        help=f"wait this long for another writer of the index to finish (default: {DEFAULT_LOCK_TIMEOUT:g}; "
        "0: fail at once)",
    )


def _encoder(args: argparse.Namespace) -> Encoder | None:
    """The encoder of ``--model``, or of the model that built the index at ``args.index`` (``None`` for an index
    that embeds nothing, such as ``bm25``), cut to the index's ``truncate_dim``."""
    from embedkit.encoders import load_encoder
    from embedkit.index.folder import current_manifest
    from embedkit.index.spec import needs_encoder

    manifest = current_manifest(args.index)
    if args.model is None and not needs_encoder(manifest.spec):
        return None
    return load_encoder(args.model or manifest.model_name, device=args.device, precision=args.precision,
                        backend=args.backend, truncate_dim=manifest.truncate_dim)


def _open_index(args: argparse.Namespace, with_encoder: bool = True) -> Index:
    """The index at ``args.index``, with the encoder of ``--model`` or of its manifest when needed."""
    from embedkit.index import Index

    encoder = _encoder(args) if with_encoder else None
    return Index.load(args.index, encoder=encoder, device=getattr(args, "index_device", "auto"))


def _plain(value: np.generic | int | str | None) -> int | str | None:
    """An id of a result array (a numpy int64, or a str or None of an object array) as the value JSON writes."""
    return value.item() if isinstance(value, np.generic) else value


def parse_params(items: list[str]) -> dict[str, float]:
    """``["nprobe=16"]`` -> ``{"nprobe": 16.0}``."""
    return parse_assignments(items, "a search parameter looks like nprobe=16 or efSearch=128")


# -- index build | info | add | remove -----------------------------------------------------------------------
def parse_target_recall(text: str) -> float | None:
    """``"0.9"`` -> ``0.9``; ``"off"`` -> ``None`` (faiss's default search parameters)."""
    from embedkit.index.tuning import check_target_recall

    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--target-recall takes a number in (0, 1] or off, got {text!r}") from None
    return check_target_recall(value)


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before anything is embedded, to build over an index without ``--overwrite`` (and over anything that
    is not an index folder at all)."""
    from embedkit.index.folder import check_replaceable, current_version

    check_replaceable(out)
    if not overwrite and current_version(out) is not None:
        raise ConfigError(f"{out} already holds an index; pass --overwrite to replace it, or choose another --out")


def cmd_index_build(args: argparse.Namespace) -> int:
    from embedkit import distributed
    from embedkit.index.folder import writer_lock
    from embedkit.index.sharded import build_index_sharded
    from embedkit.index.spec import needs_encoder
    from embedkit.index.tuning import tuning_summary

    target_recall = parse_target_recall(args.target_recall)
    distributed.init_from_environment()  # under torchrun: each process embeds a shard, rank 0 merges and saves
    _check_out(args.out, args.overwrite)  # on every rank, so that all stop before embedding
    encoder = load_model(args) if needs_encoder(args.spec) else None  # bm25 embeds nothing
    # rank 0 alone saves, so it alone locks (a lock on every rank would make the others wait for rank 0's lock)
    lock = writer_lock(args.out, args.lock_timeout) if distributed.is_main_process() else contextlib.nullcontext()
    with lock:
        if distributed.is_main_process():
            _check_out(args.out, args.overwrite)  # again under the lock: another build may have saved since
        index = build_index_sharded(
            encoder,
            _corpus(args),
            spec=args.spec,
            metric=args.metric,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            device=args.index_device,
            seed=args.seed,
            show_progress=not args.json,
            prompt_name=args.prompt_name,
            prompt=args.prompt,
            target_recall=target_recall,
        )
        if index is None:
            return 0
        index.save(args.out)
    if args.json:
        print_json(index.info())
    else:
        print(f"indexed {len(index)} documents with {args.spec} ({args.metric}) into {args.out}")
        if index.manifest.search_tuning is not None:
            print(f"search parameter {tuning_summary(index.manifest.search_tuning)}")
    return 0


def _corpus(args: argparse.Namespace) -> Corpus:
    from embedkit.index import as_corpus

    return as_corpus(args.corpus, allow_blank=args.allow_blank)


def cmd_index_info(args: argparse.Namespace) -> int:
    from embedkit.index.tuning import tuning_summary

    info = _open_index(args, with_encoder=False).info()
    if args.json:
        print_json(info)
        return 0
    fields: dict[str, object] = dict(info)
    for key in (
        "path",
        "version",
        "spec",
        "metric",
        "normalize",
        "dimension",
        "truncate_dim",
        "count",
        "id_type",
        "created",
        "embedkit_version",
    ):
        print(f"{key:<17} {fields[key]}")
    model = info["model"]
    print(f"{'model':<17} " + (f"{model['name']} ({model['fingerprint'][:19]}...)" if model["name"] else "none"))
    print(f"{'document_prompt':<17} {info['document_prompt']!r}")  # quoted: a prompt may end in a space or newline
    params = ", ".join(f"{name}={value:g}" for name, value in info["search_params"].items())
    print(f"{'search_params':<17} {params or 'defaults'}")
    print(f"{'search_tuning':<17} {tuning_summary(info['search_tuning'])}")
    print(f"{'backend':<17} " + ", ".join(f"{k}={v}" for k, v in info["backend"].items()))
    quantization = dict(info["quantization"])
    rescore = quantization.pop("rescore", None)
    if quantization:
        quantization.pop("calibration", None)
        print(f"{'quantization':<17} " + ", ".join(f"{k}={v}" for k, v in quantization.items()))
    if isinstance(rescore, dict):
        shown = {key: value for key, value in rescore.items() if key != "calibration"}
        print(f"{'rescore':<17} " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    for name, file in info["files"].items():
        print(f"{'file':<17} {name} ({file['bytes']:,} bytes)")
    return 0


def cmd_index_add(args: argparse.Namespace) -> int:
    from embedkit.index import Index

    encoder = _encoder(args)  # loaded before taking the lock: other writers need not wait for it
    with Index.update(args.index, encoder, lock_timeout=args.lock_timeout) as index:
        added = index.add(_corpus(args), batch_size=args.batch_size, show_progress=not args.json)
    if args.json:
        print_json({"index": str(args.index), "added": added, "count": len(index)})
    else:
        print(f"added {added} documents to {args.index}; it holds {len(index)}")
    return 0


def _read_ids(path: Path, id_type: str | None) -> list[int | str]:
    """One id per line (blank lines skipped); ints when the index holds int ids."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read: {error}", str(path)) from None
    ids: list[int | str] = []
    for number, line in enumerate(lines, start=1):
        value = line.strip()
        if not value:
            continue
        if id_type == "int":
            try:
                ids.append(int(value))
            except ValueError:
                raise DataError(f"the index holds int ids, but this line holds {value!r}", str(path), number) from None
        else:
            ids.append(value)
    return ids


def cmd_index_remove(args: argparse.Namespace) -> int:
    from embedkit.index import Index

    with Index.update(args.index, lock_timeout=args.lock_timeout) as index:
        removed = index.remove(_read_ids(args.ids, index.manifest.id_type))
    if args.json:
        print_json({"index": str(args.index), "removed": removed, "count": len(index)})
    else:
        print(f"removed {removed} documents from {args.index}; it holds {len(index)}")
    return 0


# -- search --------------------------------------------------------------------------------------------------
def cmd_search(args: argparse.Namespace) -> int:
    if (args.query is None) == (args.queries is None):
        raise ConfigError("give either a query text or --queries FILE")
    if args.query is not None and not args.query.strip():
        raise ConfigError("the query text is blank: give the words to search for")
    from embedkit.index import as_corpus

    # read (and a blank one refused, naming its line) before the index is opened or anything written
    queries = None if args.queries is None else list(as_corpus(args.queries))
    index = _open_index(args)
    if args.param:
        index.set_search_params(**parse_params(args.param))
    if queries is None:
        return _search_one(index, args)
    return _search_many(index, queries, args)


def _search_one(index: Index, args: argparse.Namespace) -> int:
    result = index.search([args.query], k=args.k, return_payloads=True, batch_size=args.batch_size,
                          prompt_name=args.prompt_name, prompt=args.prompt)
    assert result.texts is not None  # return_payloads=True fills them
    hits = [
        {"rank": rank, "id": _plain(doc), "score": float(score), "text": text}
        for rank, (doc, score, text) in enumerate(zip(result.ids[0], result.scores[0], result.texts[0], strict=True), 1)
        if text is not None
    ]
    if args.json:
        print_json(hits)
        return 0
    for hit in hits:
        text = " ".join(hit["text"].split())
        shown = text if len(text) <= TEXT_WIDTH else text[: TEXT_WIDTH - 3] + "..."
        print(f"{hit['rank']:>4}  {hit['id']!s:<12} {hit['score']:8.4f}  {shown}")
    return 0


def _search_many(index: Index, queries: list[Document], args: argparse.Namespace) -> int:
    from embedkit.fsutil import atomic_write_bytes

    result = index.search(
        [query.text for query in queries], k=args.k, batch_size=args.batch_size, show_progress=not args.json,
        prompt_name=args.prompt_name, prompt=args.prompt,
    )
    from embedkit.eval.runs import jsonl_line, trec_lines

    lines = []
    for query, ids, scores in zip(queries, result.ids, result.scores, strict=True):
        found = [
            (_plain(doc), float(score)) for doc, score in zip(ids, scores, strict=True) if _plain(doc) not in (-1, None)
        ]
        docs, values = [str(d) for d, _ in found], [v for _, v in found]
        if args.format == "trec":
            lines += trec_lines(str(query.id), docs, values, args.run_name)
        else:
            lines.append(jsonl_line(query.id, [d for d, _ in found], values))
    text = "".join(line + "\n" for line in lines)
    if args.output is None:
        print(text, end="")
        return 0
    atomic_write_bytes(args.output, text.encode("utf-8"))
    if args.json:
        print_json({"output": str(args.output), "queries": len(queries), "k": args.k})
    else:
        print(f"wrote the top {args.k} of {len(queries)} queries to {args.output}")
    return 0


# -- parsers -------------------------------------------------------------------------------------------------
def register(commands: argparse._SubParsersAction) -> None:
    """Add ``index`` (build, info, add, remove) and ``search``."""
    from embedkit.index.spec import DEFAULT_TARGET_RECALL, METRICS

    index = commands.add_parser("index", help="build, inspect and change an index folder")
    actions = index.add_subparsers(dest="action", required=True, metavar="ACTION")

    build = actions.add_parser("build", help="embed a corpus and save it as an index folder")
    add_model_options(build)
    add_truncate_dim(build)
    _add_corpus_options(build)
    build.add_argument("--out", required=True, type=Path, help="the index folder to write")
    build.add_argument(
        "--spec",
        default="torch",
        help="torch, torch:cuda, faiss:Flat, faiss:IVF256,Flat, faiss:HNSW32, faiss:SQ8, faiss:BFlat,rescore=4, "
        "bm25 (needs no model), hybrid:faiss:Flat, hybrid:fusion=convex,alpha=0.5:torch, ...",
    )
    build.add_argument("--metric", default="cosine", choices=METRICS, help="default: cosine")
    build.add_argument("--chunk-size", type=int, default=16384, help="documents embedded at a time (bounds memory)")
    build.add_argument("--seed", type=int, default=0, help="seed of the training sample (IVF, PQ) and tuning queries")
    build.add_argument(
        "--target-recall",
        default=str(DEFAULT_TARGET_RECALL),
        metavar="R|off",
        help=f"tune nprobe (IVF) or efSearch (HNSW) to the smallest value whose recall@10 against exact search "
        f"reaches R, with a tenth of the corpus as held-out queries (default: {DEFAULT_TARGET_RECALL}); off: faiss's "
        "defaults",
    )
    build.add_argument("--overwrite", action="store_true", help="replace the index at --out (a new version of it)")
    add_prompt_options(build, "every document", "the model's document prompt")
    _add_index_device(build)
    _add_lock_timeout(build)
    build.add_argument("--json", action="store_true", help="print the index info as JSON")
    build.set_defaults(func=cmd_index_build)

    info = actions.add_parser("info", help="what an index holds")
    info.add_argument("index", type=Path, help="the index folder")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(func=cmd_index_info)

    add = actions.add_parser("add", help="embed more documents into an index folder")
    add.add_argument("index", type=Path, help="the index folder")
    _add_corpus_options(add)
    _add_encoder_options(add)
    _add_lock_timeout(add)
    add.add_argument("--json", action="store_true", help="print the result as JSON")
    add.set_defaults(func=cmd_index_add)

    remove = actions.add_parser("remove", help="remove documents by id from an index folder")
    remove.add_argument("index", type=Path, help="the index folder")
    remove.add_argument("--ids", required=True, type=Path, help="a text file with one id per line")
    _add_lock_timeout(remove)
    remove.add_argument("--json", action="store_true", help="print the result as JSON")
    remove.set_defaults(func=cmd_index_remove)

    search = commands.add_parser("search", help="search an index folder with a query or a file of queries")
    search.add_argument("index", type=Path, help="the index folder")
    search.add_argument("query", nargs="?", default=None, help="a query text")
    search.add_argument("--queries", default=None, help="a file of queries (jsonl with _id/id and text, or txt)")
    search.add_argument("-k", type=int, default=10, help="results per query (default: 10)")
    search.add_argument("--output", type=Path, default=None, help="with --queries: the run file to write")
    search.add_argument("--format", choices=("jsonl", "trec"), default="jsonl",
                        help="with --queries: jsonl (one line per query) or trec (query Q0 doc rank score run, as "
                        "trec_eval, ranx and pyserini read)")
    search.add_argument("--run-name", default="embedkit", help="the run name of a TREC run (default: embedkit)")
    search.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a search parameter, e.g. nprobe=16 (IVF) or efSearch=128 (HNSW)",
    )
    _add_encoder_options(search)
    add_prompt_options(search, "every query", "the model's query prompt")
    _add_index_device(search)
    search.add_argument("--json", action="store_true", help="print the results as JSON")
    search.set_defaults(func=cmd_search)
