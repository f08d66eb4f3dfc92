"""Preference benchmark: hh-rlhf harmless-base, fit on train, report on test, from the offline all-MiniLM-L6-v2.

One run, fixed seed, accuracy (percent) with a 95% Wilson interval for every variant:

1. ``zero-shot``: cos(prompt, chosen) > cos(prompt, rejected). The DESIGN.md protocol (full prompt left to the
   encoder's right-truncation at 256 tokens, fp32; reference 45.25) and, for comparison, the prompt cut from
   the left (its latest turns kept) as :class:`PreferenceEvaluator` does by default.
2. ``frozen-linear``: the encoder frozen, a linear Bradley-Terry head on its embeddings, fitted by L-BFGS with
   an L2 penalty chosen by 5-fold cross-validation on train (held-out log loss). The DESIGN.md protocol embeds
   the last human turn + the response (reference 59.38); ``frozen-linear-rendered`` embeds the
   :func:`render_pair` text that the fine-tuned models read, and is the starting head of variants 3 and 4
   (linear probing, then fine-tuning: Kumar et al., 2022, LP-FT).
3. ``bt``: full fine-tuning with the ``reward-bt`` objective, Bradley-Terry alone.
4. ``bt+contrastive``: the same, plus the contrastive representation term (``contrastive_weight``).

Variants 3 and 4 share the seed, batches, steps and starting head; only the objective differs. Usage::

    python benchmarks/bench_preference.py            # the full run, about 15 minutes on 2 idle CPU cores
    python benchmarks/bench_preference.py --quick    # a smoke test on a slice of the data, about 2 minutes
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import _common
import numpy as np
import torch
import torch.nn.functional as F

import embedkit
from embedkit import FitSettings, fit, load_encoder, read_examples
from embedkit.encoders import Encoder
from embedkit.eval.preference import PreferenceEvaluator, PreferenceReport, preference_report
from embedkit.preference import RewardHead, RewardModelObjective, render_for
from embedkit.types import Example

ROOT = _common.REPO_ROOT
REFERENCE = {"zero-shot": 45.25, "frozen-linear": 59.38}
L2_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "preference_hh_rlhf",
                        help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 256 train rows, 128 test rows, 8 steps")
    parser.add_argument("--steps", type=int, default=116,
                        help="fine-tuning steps (default: 116, one epoch of train at batch 16: reward models "
                             "over-fit past one epoch, Ouyang et al., 2022)")
    parser.add_argument("--batch-size", type=int, default=16, help="preference rows per step (default: 16)")
    parser.add_argument("--lr", type=float, default=3e-5, help="learning rate of encoder and head (default: 3e-5)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per rendered pair (default: 128)")
    parser.add_argument("--contrastive-weight", type=float, default=0.1, help="weight of the contrastive term")
    parser.add_argument("--temperature", type=float, default=0.05, help="temperature of the contrastive term")
    parser.add_argument("--precision", default="auto", help="fine-tuning precision (default: auto)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, default=None,
                        help="default: benchmarks/results/preference.json (preference-quick.json with --quick)")
    return parser.parse_args()


def last_human_turn(prompt: str) -> str:
    """The prompt from its last ``"\\n\\nHuman:"`` on: the question the reply answers."""
    return prompt[prompt.rfind("\n\nHuman:"):]


def rms(x: torch.Tensor) -> torch.Tensor:
    """What :class:`RewardHead` feeds its linear layer: unit-RMS rows."""
    return F.normalize(x, dim=-1) * math.sqrt(x.shape[-1])


def fit_linear_bt(differences: torch.Tensor, l2: float) -> torch.Tensor:
    """``w`` minimising ``mean -log sigmoid(d @ w) + l2 |w|^2`` over ``[n, D]`` feature differences (L-BFGS)."""
    w = torch.zeros(differences.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -F.logsigmoid(differences @ w).mean() + l2 * (w @ w)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()


def linear_probe(chosen: np.ndarray, rejected: np.ndarray, seed: int) -> tuple[RewardHead, float, dict]:
    """A Bradley-Terry :class:`RewardHead` on frozen ``[n, D]`` embeddings; the L2 penalty by 5-fold CV.

    The bias cancels in ``r_c - r_r``, so only ``w`` is fitted (the bias stays 0).
    """
    differences = (rms(torch.from_numpy(chosen).double()) - rms(torch.from_numpy(rejected).double()))
    folds = torch.randperm(len(differences), generator=torch.Generator().manual_seed(seed)) % 5
    cv_loss = {}
    for l2 in L2_GRID:
        held_out = []
        for fold in range(5):
            w = fit_linear_bt(differences[folds != fold], l2)
            held_out.append(-F.logsigmoid(differences[folds == fold] @ w).mean().item())
        cv_loss[l2] = float(np.mean(held_out))
    best = min(cv_loss, key=cv_loss.get)
    head = RewardHead(differences.shape[1])
    with torch.no_grad():
        head.linear.weight.copy_(fit_linear_bt(differences, best)[None].float())
        head.linear.bias.zero_()
    return head, best, cv_loss


def head_scores(head: RewardHead, embeddings: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head(torch.from_numpy(embeddings)).numpy()


def last_turn_texts(encoder: Encoder, prompts: Sequence[str], replies: Sequence[str]) -> list[str]:
    """The DESIGN.md frozen-embedding input: the last human turn, then the reply (the encoder truncates)."""
    return [last_human_turn(prompt) + reply for prompt, reply in zip(prompts, replies, strict=True)]


def frozen_linear(
    encoder: Encoder, train: Sequence[Example], test: Sequence[Example], texts: Callable[..., list[str]], seed: int
) -> tuple[RewardHead, PreferenceReport, float, dict]:
    """A linear probe on frozen embeddings of ``texts(encoder, prompts, replies)``, scored on ``test``."""

    def embed(rows: Sequence[Example], chosen: bool) -> np.ndarray:
        replies = [row.positive if chosen else row.negatives[0] for row in rows]
        return encoder.encode(texts(encoder, [row.anchor for row in rows], replies), batch_size=64)

    head, l2, cv = linear_probe(embed(train, True), embed(train, False), seed)
    report = preference_report(head_scores(head, embed(test, True)), head_scores(head, embed(test, False)), "reward")
    return head, report, l2, cv


def summary(report: PreferenceReport, seconds: float, **extra) -> dict:
    return {**report.metrics(), "seconds": round(seconds, 1), **extra}


def fine_tune(
    train: Sequence[Example], test_path: Path, test_limit: int | None, start_head: RewardHead,
    contrastive_weight: float, args: argparse.Namespace, steps: int,
) -> dict:
    """Fine-tune the encoder and head with ``reward-bt`` and score the test set in reward mode."""
    encoder = load_encoder(max_seq_length=args.max_length, precision=args.precision, backend="torch")
    objective = RewardModelObjective(contrastive_weight=contrastive_weight, temperature=args.temperature,
                                     dim=encoder.dim)
    objective.head.load_state_dict(start_head.state_dict())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        settings = FitSettings(output_dir=folder, batch_size=args.batch_size, lr=args.lr, max_steps=steps,
                               warmup_ratio=0.1, seed=args.seed, save_steps=steps + 1, log_steps=10,
                               show_progress=False, resume=False)
        result = fit(encoder, train, objective, settings, kind="preference")
    trained = time.perf_counter() - started
    losses = [record["loss"] for record in result.history if "loss" in record]
    evaluator = PreferenceEvaluator(test_path, mode="reward", reward_head=objective.head, limit=test_limit)
    report = evaluator.report(encoder)
    return summary(report, time.perf_counter() - started, train_seconds=round(trained, 1), steps=steps,
                   first_losses=[round(v, 4) for v in losses[:3]], last_losses=[round(v, 4) for v in losses[-3:]])


def machine() -> dict:
    """Where the numbers were taken (the fields of the first recorded run, kept for comparison)."""
    return {"cpu": _common.cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            # other work on the machine slows timings
            "load_average_1min_at_end": _common.load_average()[0]}


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    train_path, test_path = args.data / "train.jsonl", args.data / "test.jsonl"
    train = read_examples(train_path)
    steps, test_limit = args.steps, None
    if args.quick:
        train, steps, test_limit, args.max_length = train[:256], 8, 128, 64
    test = read_examples(test_path, limit=test_limit)
    results: dict[str, dict] = {}

    def log(name: str) -> None:
        print(f"{name:<32} {results[name]['accuracy']:6.2f}  [{results[name]['accuracy_low']:.2f}, "
              f"{results[name]['accuracy_high']:.2f}]  {results[name]['seconds']:7.1f} s", flush=True)

    # 1. zero-shot similarity, in fp32 as the DESIGN.md reference was measured
    fp32 = load_encoder(precision="fp32", backend="torch")
    for name, truncation in (("zero-shot", "right"), ("zero-shot-left-truncated", "left")):
        t = time.perf_counter()
        report = PreferenceEvaluator(test_path, prompt_truncation=truncation, limit=test_limit).report(fp32)
        results[name] = summary(report, time.perf_counter() - t, prompt_truncation=truncation,
                                max_seq_length=fp32.max_seq_length)
        log(name)

    # 2a. frozen encoder + linear Bradley-Terry head, DESIGN.md protocol: last human turn + response
    t = time.perf_counter()
    head, report, l2, cv = frozen_linear(fp32, train, test, last_turn_texts, args.seed)
    results["frozen-linear"] = summary(report, time.perf_counter() - t, text="last human turn + response",
                                       l2=l2, cv_log_loss=cv)
    log("frozen-linear")

    # 2b. the same on the rendered pairs the fine-tuned models read; its head starts variants 3 and 4
    t = time.perf_counter()
    frozen = load_encoder(max_seq_length=args.max_length, precision=args.precision, backend="torch")
    start_head, report, l2, cv = frozen_linear(frozen, train, test, render_for, args.seed)
    results["frozen-linear-rendered"] = summary(report, time.perf_counter() - t, text="render_pair(prompt, response)",
                                                max_length=args.max_length, l2=l2, cv_log_loss=cv)
    log("frozen-linear-rendered")

    # 3 and 4. full fine-tuning from the linear probe's head
    for name, weight in (("bt", 0.0), ("bt+contrastive", args.contrastive_weight)):
        results[name] = fine_tune(train, test_path, test_limit, start_head, weight, args, steps)
        results[name]["contrastive_weight"] = weight
        log(name)

    output = args.output or _common.result_path("preference-quick" if args.quick else "preference")
    record = {
        "benchmark": "preference",
        "data": {"train": str(train_path), "test": str(test_path), "train_rows": len(train), "test_rows": len(test)},
        "model": embedkit.DEFAULT_MODEL,
        "settings": {"quick": args.quick, "steps": steps, "batch_size": args.batch_size, "lr": args.lr,
                     "warmup_ratio": 0.1, "max_length": args.max_length, "contrastive_weight": args.contrastive_weight,
                     "temperature": args.temperature, "precision": args.precision, "seed": args.seed},
        "reference": REFERENCE,
        "results": results,
        "machine": machine(),
        "versions": _common.versions(("embedkit", "torch", "transformers", "sentence_transformers")),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    _common.write_results(record, output)
    print(f"wrote {output} ({record['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
