"""Reliability soak: concurrent writers, readers searching throughout, and writers killed at random.

Each round starts ``--writers`` writer processes on one index folder. A writer runs ``--ops`` operations through
the command line's own code (``embedkit index add --corpus`` of 3 new documents, embedded by the tiny model, or
``embedkit index remove --ids`` of documents it added before), each one a whole load-modify-save, and journals
every operation before and after it. Some writers are killed: with ``SIGKILL`` at a random moment of a random
operation (encoding, loading, waiting for the lock or saving), or at a random rename or fsync of a save
(``EMBEDKIT_CRASH_AT``, the crash tests' hook). ``--readers`` reader processes
load and search the index throughout, checking that each hit's text belongs to its id (vectors and payloads of
one version). After each round the index must load, and hold exactly the documents the journals say: every
completed operation applied, and a killed one applied whole or not at all.

Reported: operations done, writes killed (an operation in flight when its writer died), documents expected vs
present, lost and unexpected documents, operations applied in part, reader errors, states that no longer load,
and what killed writers left behind (half-written versions, working copies) and whether later writers removed
it. Targets: 0 lost documents, 0 reader errors, 0 unrecoverable states, over at least 200 killed writes.

Processes come from a fork server that imported embedkit once, so that a writer starts in a fraction of a
second rather than re-importing torch. Writes ``benchmarks/results/reliability.json``.

    python benchmarks/bench_reliability.py [--rounds 90] [--writers 5] [--ops 2] [--readers 2] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import multiprocessing.process
import os
import random
import re
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.context import ForkServerContext
from pathlib import Path

import _common
import numpy as np

from embedkit.cli import main as embedkit_main
from embedkit.encoders import build_tiny_model
from embedkit.fsutil import CRASH_ENV, CRASH_EXIT_CODE, lock_existing
from embedkit.index import Index
from embedkit.index.folder import POINTER_FILE, read_pointer
from embedkit.index.store import WORKDIR_PREFIX

log = _common.setup_logging("reliability")
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "runs", "in", "park", "sun", "rain", "falls", "hills"]
SAVE_POINTS = 10  # crash points in one save of a clean index folder (tests/unit/index/test_index_concurrency.py)
INITIAL_DOCUMENTS = 30


def text_of(doc_id: str) -> str:
    """The text of a document, derived from its id, so that a reader can check any hit on its own."""
    rng = random.Random(doc_id)
    return f"{doc_id} " + " ".join(rng.choice(WORDS) for _ in range(8))


def write_jsonl(path: Path, ids: list[str]) -> None:
    path.write_text("".join(json.dumps({"_id": i, "text": text_of(i)}) + "\n" for i in ids))


# -- writer and reader processes -----------------------------------------------------------------------------
def redirect_output(path: Path) -> None:
    """Send this process's stdout and stderr to ``path`` (the crash hook reports its step on stderr)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def journal(path: Path, entry: dict[str, object]) -> None:
    """Append one line, with the time; a kill mid-line leaves a partial line, which the parent skips."""
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps({**entry, "time": time.time()}) + "\n")


def writer(root: str, name: str, work: str, ops: int, crash_at: int, seed: float) -> None:
    """``ops`` adds and removes through the command line, each journalled before and after it runs."""
    folder = Path(work)
    redirect_output(folder / f"{name}.log")
    tempfile.tempdir = str(folder.parent / "temp")
    if crash_at:
        os.environ[CRASH_ENV] = str(crash_at)
    rng = random.Random(seed)
    mine: list[str] = []
    for number in range(ops):
        if mine and rng.random() < 0.35:
            ids = [mine.pop(rng.randrange(len(mine))) for _ in range(min(len(mine), rng.randint(1, 2)))]
            (folder / f"{name}-{number}.txt").write_text("".join(i + "\n" for i in ids))
            argv = ["index", "remove", root, "--ids", str(folder / f"{name}-{number}.txt"), "--json"]
            kind = "remove"
        else:
            ids = [f"{name}-{number}-{j}" for j in range(3)]
            write_jsonl(folder / f"{name}-{number}.jsonl", ids)
            argv = ["index", "add", root, "--corpus", str(folder / f"{name}-{number}.jsonl"), "--json"]
            argv += ["--precision", "fp32"]
            kind = "add"
        journal(folder / f"{name}.journal", {"op": number, "kind": kind, "ids": ids, "state": "begin"})
        code = embedkit_main([*argv, "--lock-timeout", "300"])
        gc.collect()  # the index's working copy goes now, not at exit (a fork server's child skips atexit)
        journal(folder / f"{name}.journal", {"op": number, "state": "done" if code == 0 else f"failed {code}"})
        if kind == "add" and code == 0:
            mine.extend(ids)


def reader(root: str, stop: str, out: str, seed: int) -> None:
    """Load and search until ``stop`` exists; writes reads, versions seen and every error to ``out``."""
    rng = np.random.default_rng(seed)
    reads, versions, errors = 0, set(), []
    while not Path(stop).exists():
        try:
            index = Index.load(root)
            queries = rng.standard_normal((2, index.manifest.dimension)).astype(np.float32)
            result = index.search(queries, k=10, return_payloads=True)
            for doc_id, text in zip(result.ids.ravel(), result.texts.ravel(), strict=True):
                if doc_id is not None and text != text_of(doc_id):
                    raise AssertionError(f"hit {doc_id!r} carries another document's text: {text[:40]!r}")
            reads += 1
            versions.add(index.version)
        except Exception as error:  # noqa: BLE001  (every error counts, whatever its kind)
            errors.append(f"{type(error).__name__}: {error}")
    Path(out).write_text(json.dumps({"reads": reads, "versions": len(versions), "errors": errors}))


# -- the parent: plans, kills, checks ------------------------------------------------------------------------
@dataclass
class Totals:
    """Everything counted over the run."""

    writer_processes: int = 0
    writer_errors: list[str] = field(default_factory=list)
    ops_done: Counter = field(default_factory=Counter)
    ops_failed: list[str] = field(default_factory=list)
    killed_processes: int = 0
    killed_writes: int = 0
    killed_by: Counter = field(default_factory=Counter)
    killed_applied: int = 0
    killed_not_applied: int = 0
    torn: list[str] = field(default_factory=list)
    lost: set[str] = field(default_factory=set)
    unexpected: set[str] = field(default_factory=set)
    unrecoverable: list[str] = field(default_factory=list)
    leftovers_seen: int = 0
    leftovers_removed: int = 0
    durations: list[float] = field(default_factory=list)
    op_seconds: list[float] = field(default_factory=list)


def read_journal(path: Path) -> list[dict]:
    """A writer's journal entries; a line cut off by a kill is skipped."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def apply(op: dict, expected: set[str]) -> None:
    (expected.update if op["kind"] == "add" else expected.difference_update)(op["ids"])


def settle(entries: list[dict], present: set[str], expected: set[str], totals: Totals, name: str) -> bool:
    """Apply one writer's journal to ``expected``: completed operations as they are; one killed in flight as the
    index shows it, which must be all of it or none. Returns whether an operation was in flight."""
    begun: dict[int, dict] = {}
    for entry in entries:
        if entry["state"] == "begin":
            begun[entry["op"]] = entry
            continue
        op = begun.pop(entry["op"])
        if entry["state"] == "done":
            totals.ops_done[op["kind"]] += 1
            totals.op_seconds.append(entry["time"] - op["time"])
            apply(op, expected)
        else:
            totals.ops_failed.append(f"{name} op {op['op']}: {entry['state']}")
    for op in begun.values():  # at most one: the operation its writer was killed in
        shown = [doc_id in present for doc_id in op["ids"]]
        if any(shown) and not all(shown):
            totals.torn.append(f"{name} {op['kind']} {op['ids']}")
        if all(shown) == (op["kind"] == "add"):
            totals.killed_applied += 1
            apply(op, expected)
        else:
            totals.killed_not_applied += 1
    return bool(begun)


def is_abandoned(path: Path) -> bool:
    """Whether no live process holds the working copy at ``path`` (its owner locks it while it lives)."""
    fd = lock_existing(path, wait=False)
    if fd is None:
        return False
    os.close(fd)
    return True


def leftovers(root: Path, temp: Path) -> set[str]:
    """What is on disk besides the current index: versions that are not current (a killed writer's half-written
    one, or one that a reader held when it was replaced), pointer temporaries, abandoned working copies."""
    current = read_pointer(root)
    inside = {f"idx/{p.name}" for p in root.iterdir() if p.name not in (POINTER_FILE, current)}
    beside = {p.name for p in root.parent.iterdir() if p.name.startswith(".idx.") and p.name != ".idx.lock"}
    copies = {f"temp/{p.name}" for p in temp.glob(f"{WORKDIR_PREFIX}*") if is_abandoned(p)}
    return inside | beside | copies


def present_ids(root: Path) -> set[str]:
    externals, _ = Index.load(root).store.id_arrays()
    return {e for e in externals.tolist() if e is not None}


def kill_during(process: multiprocessing.process.BaseProcess, journal_path: Path, op: int, delay: float) -> None:
    """SIGKILL ``process`` ``delay`` seconds after it begins operation ``op`` (if it still runs then): a random
    moment of the operation, rather than of the process's start-up, which a kill would mostly hit."""

    def watch() -> None:
        while process.is_alive():
            if any(entry["op"] == op for entry in read_journal(journal_path)):
                time.sleep(delay)
                if process.is_alive() and process.pid is not None:
                    os.kill(process.pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()


def crash_step(log_path: Path) -> str:
    """The step a crash point killed the writer at (from its log), or ``sigkill``."""
    found = re.findall(r"crash injected at point \d+ \(([\w-]+)\)", log_path.read_text(errors="replace"))
    return f"crash point: {found[-1]}" if found else "sigkill"


@dataclass
class Round:
    """One round's settings."""

    number: int
    writers: int
    ops: int
    kill_fraction: float


def run_round(
    context: ForkServerContext, spec: Round, root: Path, base: Path, rng: random.Random, totals: Totals
) -> list[tuple[multiprocessing.process.BaseProcess, str]]:
    """Start the round's writers, kill some, wait for all; returns ``(process, name)`` of each."""
    work = base / f"round-{spec.number:04d}"
    work.mkdir()
    typical = statistics.median(totals.op_seconds[-50:]) if totals.op_seconds else 2.0
    started = []
    for w in range(spec.writers):
        plan = "none" if rng.random() >= spec.kill_fraction else rng.choice(["sigkill", "crash-point"])
        crash_at = rng.randint(1, SAVE_POINTS * spec.ops) if plan == "crash-point" else 0
        name = f"w{spec.number}x{w}"
        process = context.Process(target=writer, args=(str(root), name, str(work), spec.ops, crash_at, rng.random()))
        process.start()
        if plan == "sigkill":
            kill_during(process, work / f"{name}.journal", rng.randrange(spec.ops), rng.uniform(0, 1.2) * typical)
        started.append((process, name, plan, time.monotonic()))
    for process, _, plan, begun in started:
        process.join(900)
        if process.exitcode is None:
            raise RuntimeError(f"round {spec.number}: a writer hung for 15 minutes")
        if plan == "none":
            totals.durations.append(time.monotonic() - begun)
    totals.writer_processes += len(started)
    return [(process, name) for process, name, _, _ in started]


def check_round(
    number: int,
    root: Path,
    work: Path,
    writers: list[tuple[multiprocessing.process.BaseProcess, str]],
    expected: set[str],
    totals: Totals,
) -> None:
    """The index must load and hold what the journals say; counts kills and their outcome."""
    present = present_ids(root)
    for process, name in writers:
        in_flight = settle(read_journal(work / f"{name}.journal"), present, expected, totals, name)
        if process.exitcode in (CRASH_EXIT_CODE, -signal.SIGKILL):
            totals.killed_processes += 1
            if in_flight:
                totals.killed_writes += 1
                totals.killed_by[crash_step(work / f"{name}.log")] += 1
        elif process.exitcode != 0:
            totals.writer_errors.append(f"round {number} {name}: exit code {process.exitcode}")
    totals.lost |= expected - present
    totals.unexpected |= present - expected


def soak(context: ForkServerContext, args: argparse.Namespace, base: Path, totals: Totals) -> dict:
    """Build the index, run the rounds with readers throughout, then one last writer that is never killed."""
    root, temp = base / "idx", base / "temp"
    model = build_tiny_model(base / "model", WORDS, seed=0)
    initial = [f"start-{i}" for i in range(INITIAL_DOCUMENTS)]
    write_jsonl(base / "initial.jsonl", initial)
    build = ["index", "build", "--model", str(model), "--corpus", str(base / "initial.jsonl"), "--out", str(root)]
    if embedkit_main([*build, "--spec", args.spec, "--precision", "fp32", "--json"]) != 0:
        raise RuntimeError("the initial build failed")
    expected, stop = set(initial), base / "stop"
    readers = [
        context.Process(target=reader, args=(str(root), str(stop), str(base / f"reader-{r}.json"), r))
        for r in range(args.readers)
    ]
    for process in readers:
        process.start()
    pending: set[str] = set()
    rounds = [Round(n, args.writers, args.ops, args.kill_fraction) for n in range(args.rounds)]
    for spec in [*rounds, Round(args.rounds, 1, 1, 0.0)]:
        writers = run_round(context, spec, root, base, rng=args.rng, totals=totals)
        try:
            check_round(spec.number, root, base / f"round-{spec.number:04d}", writers, expected, totals)
        except Exception as error:  # noqa: BLE001  (the state that no longer loads is the finding)
            totals.unrecoverable.append(f"round {spec.number}: {type(error).__name__}: {error}")
            break
        now = leftovers(root, temp)
        totals.leftovers_seen += len(now - pending)
        totals.leftovers_removed += len(pending - now)
        pending = now
        log(
            f"round {spec.number + 1}/{args.rounds + 1}: {len(expected)} documents, {totals.killed_writes} killed "
            f"writes, {sum(totals.ops_done.values())} operations done, {len(totals.lost)} lost, {len(now)} leftovers"
        )
    stop.touch()
    for process in readers:
        process.join(300)
    reads = [json.loads((base / f"reader-{r}.json").read_text()) for r in range(args.readers)]
    return {"expected": expected, "present": present_ids(root), "reads": reads, "remaining": sorted(pending)}


def report(args: argparse.Namespace, totals: Totals, outcome: dict, seconds: float, load_before: list) -> dict:
    reader_errors = [error for result in outcome["reads"] for error in result["errors"]]
    settings = {k: v for k, v in vars(args).items() if k not in ("rng", "output")}
    return {
        "benchmark": "reliability",
        "what": (__doc__ or "").split("\n\n")[0],
        "settings": {**settings, "initial_documents": INITIAL_DOCUMENTS, "model": "build_tiny_model (hidden 32)"},
        "machine": _common.machine_info(("embedkit", "torch", "faiss-cpu", "numpy")),
        "seconds": round(seconds, 1),
        "load_average_before": load_before,
        "load_average_after": _common.load_average(),
        "writer_processes": totals.writer_processes,
        "writer_seconds_median": round(statistics.median(totals.durations), 2) if totals.durations else None,
        "operation_seconds_median": round(statistics.median(totals.op_seconds), 2) if totals.op_seconds else None,
        "writer_errors": totals.writer_errors[:5],
        "operations_done": dict(totals.ops_done),
        "operations_failed": len(totals.ops_failed),
        "operations_failed_examples": totals.ops_failed[:5],
        "killed_processes": totals.killed_processes,
        "killed_writes": totals.killed_writes,
        "killed_writes_by_step": dict(totals.killed_by.most_common()),
        "killed_writes_applied_whole": totals.killed_applied,
        "killed_writes_not_applied": totals.killed_not_applied,
        "killed_writes_applied_in_part": len(totals.torn),
        "documents_expected": len(outcome["expected"]),
        "documents_present": len(outcome["present"]),
        "documents_lost": len(totals.lost),
        "documents_unexpected": len(totals.unexpected),
        "lost_examples": sorted(totals.lost)[:5],
        "reader_loads": sum(result["reads"] for result in outcome["reads"]),
        "reader_versions_seen": [result["versions"] for result in outcome["reads"]],
        "reader_errors": len(reader_errors),
        "reader_error_examples": reader_errors[:5],
        "unrecoverable_states": len(totals.unrecoverable) + len(totals.torn),
        "unrecoverable_examples": (totals.unrecoverable + totals.torn)[:5],
        "leftovers_after_rounds": totals.leftovers_seen,
        "leftovers_removed_by_later_writers": totals.leftovers_removed,
        "leftovers_remaining_at_end": outcome["remaining"],
        "targets": {
            "no_lost_documents": not totals.lost and outcome["expected"] == outcome["present"],
            "no_reader_errors": not reader_errors,
            "no_unrecoverable_states": not totals.unrecoverable and not totals.torn,
            "at_least_200_killed_writes": totals.killed_writes >= 200,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=90)
    parser.add_argument("--writers", type=int, default=5, help="writer processes per round")
    parser.add_argument("--ops", type=int, default=2, help="operations per writer")
    parser.add_argument("--readers", type=int, default=2, help="reader processes, searching throughout")
    parser.add_argument("--kill-fraction", type=float, default=0.8, help="the share of writers killed")
    parser.add_argument("--spec", default="faiss:Flat", help="the index spec")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run of 3 rounds; numbers mean nothing")
    parser.add_argument("--output", type=Path, default=_common.result_path("reliability"))
    args = parser.parse_args()
    if args.quick:
        args.rounds = 3
    args.rng = random.Random(args.seed)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["embedkit.cli", "embedkit.index", "embedkit.encoders"])
    started, load_before, totals = time.perf_counter(), _common.load_average(), Totals()
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as scratch:
        (Path(scratch) / "temp").mkdir()  # the writers' temporary folder: their working copies are counted there
        outcome = soak(context, args, Path(scratch), totals)
    document = report(args, totals, outcome, time.perf_counter() - started, load_before)
    _common.write_results(document, args.output)
    log(f"wrote {args.output}: {json.dumps(document['targets'])}")


if __name__ == "__main__":
    main()
