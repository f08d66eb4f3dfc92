"""Adapting an encoder to a retrieval collection: the whole path from judged queries to a better model.

:func:`adapt` chains what fine-tuning on one's own (query, document) pairs needs:

1. splits: the folder's ``train`` and ``dev`` qrels when it has them, else its judged queries split by a seed
   into train, dev and test (:func:`~embedkit.data.split_queries`), written beside the run;
2. training pairs from the train split (:func:`~embedkit.data.beir_pairs`), symmetric InfoNCE over in-batch
   negatives and hard negatives mined from the collection's own corpus with the model being trained, refreshed
   every epoch (:mod:`embedkit.training.negatives`);
3. nDCG@10 on the dev queries picks the model: the start model, the model every third of an epoch, and WiSE-FT
   interpolations between the start and the best of those, so the model handed back is never below the start on
   dev;
4. the test queries, never seen in training or selection, scored before and after.

Queries and documents get the model's query and document prompts, or those ``data.prompts`` gives (anchor: the
queries, positive: the documents), in training, in selection and in both test scores.

The defaults (:data:`ADAPT_RECIPE`) were chosen for collections of a few hundred to a few thousand judged
queries; any value can be overridden like a recipe's (``section.key=value``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.data import ColumnPrompts, beir_pairs, split_queries
from embedkit.encoders import DEFAULT_MODEL, load_encoder
from embedkit.errors import ConfigError
from embedkit.eval.retrieval import RetrievalEvaluator
from embedkit.training.fit import FitResult, column_prompts
from embedkit.training.recipe import RunConfig, apply_overrides, config_from_dict, run_training

ADAPT_RECIPE: dict[str, dict[str, Any]] = {
    # symmetric (query-to-document and document-to-query, as CLIP): dev nDCG@10 on Cranfield's split 46.20 against
    # 45.20 one-way (benchmarks/bench_finetune.py's split, seed 0)
    "loss": {"name": "infonce", "temperature": 0.05, "symmetric": True},
    "train": {
        "batch_size": 32,
        "lr": 5e-5,
        "epochs": 3,
        "warmup_ratio": 0.1,
        "log_steps": 5,
        "interpolation": [0.25, 0.5, 0.75],
    },
    "mining": {"negatives": 1},
    "eval": {"retrieval_split": "dev", "primary": "retrieval"},
}
"""The adaptation defaults; ``eval_steps`` is a third of an epoch, ``save_steps`` and ``mining.refresh_steps`` one
epoch."""

# On small collections the best model comes early and dev falls after it (Cranfield's 135 train queries: best at
# 20 of 60 steps, dev 1.5 points lower at step 30 and 5.7 at step 60, mean of seeds 0 and 1). Scored on one half of
# the dev queries and chosen on the other, choosing every 10 steps gained 1.1 and 1.7 points over choosing every
# epoch (30 steps) for those seeds; averaging checkpoints (a uniform soup of steps 10-30, 10-60 or 20-60) gained
# nothing over choosing one.
EVALS_PER_EPOCH = 3
SPLIT_SHARES = {"train": 0.7, "dev": 0.1, "test": 0.2}
DATA_DIR = "data"


@dataclass
class AdaptResult:
    """A finished adaptation: the training run, and test metrics of the start and the delivered model
    (``None`` when the collection has no test queries)."""

    run: FitResult
    data: Path
    test_before: dict[str, float] | None
    test_after: dict[str, float] | None


def adaptation_splits(folder: str | os.PathLike[str], out: Path, seed: int = 0) -> Path:
    """The BEIR folder to train on: ``folder`` itself when it has ``train`` and ``dev`` qrels, else a copy under
    ``out/data`` whose judged queries are split into train, dev and test (70/10/20) by ``seed``.

    Raises:
        ConfigError: the folder has several qrels files but not both ``train`` and ``dev``.
    """
    splits = {path.stem for path in (Path(folder) / "qrels").glob("*.tsv")}
    if {"train", "dev"} <= splits:
        return Path(folder)
    if len(splits) != 1:
        raise ConfigError(
            f"{folder} has qrels for {', '.join(sorted(splits)) or 'no split'}: give it train and dev qrels, or "
            "a single qrels file to split (embedkit split-queries)"
        )
    target = out / DATA_DIR
    if not (target / "qrels" / "train.tsv").exists():
        split_queries(folder, target, SPLIT_SHARES, seed=seed, source_split=splits.pop())
    return target


def adapt_config(
    data: Path, out: Path, model: str = DEFAULT_MODEL, overrides: list[str] | None = None
) -> RunConfig:
    """The recipe :func:`adapt` runs: :data:`ADAPT_RECIPE` for ``data`` and ``out``, a third of an epoch between
    evaluations and one between refreshes and checkpoints, then ``overrides``."""
    raw = {section: dict(values) for section, values in ADAPT_RECIPE.items()}
    raw["model"] = {"name": model}
    raw["data"] = {"path": str(data)}
    raw["train"]["output_dir"] = str(out)
    raw["eval"]["retrieval"] = str(data)
    raw = apply_overrides(raw, overrides or [])
    epoch = max(1, len(beir_pairs(data, "train")) // int(raw["train"]["batch_size"]))
    raw["train"].setdefault("eval_steps", max(1, epoch // EVALS_PER_EPOCH))
    for section, key in (("train", "save_steps"), ("mining", "refresh_steps")):
        raw[section].setdefault(key, epoch)
    return config_from_dict(raw)


def adapt(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    model: str = DEFAULT_MODEL,
    *,
    seed: int = 0,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> AdaptResult:
    """Fine-tune ``model`` on the judged queries of the BEIR folder ``folder`` (see the module docs).

    Returns:
        The run (``out/best`` is the delivered model) and the test metrics before and after.
    """
    out = Path(out)
    data = adaptation_splits(folder, out, seed)
    config = adapt_config(data, out, model, [f"train.seed={seed}", *(overrides or [])])
    result = run_training(config, show_progress=show_progress, overwrite=overwrite)
    if not (data / "qrels" / "test.tsv").is_file():
        return AdaptResult(run=result, data=data, test_before=None, test_after=None)
    test = RetrievalEvaluator(data, split="test")
    precision, device = config.model.precision, config.model.device
    # both scored as dev was in training: in torch, in the run's precision
    start = load_encoder(config.model.name, precision=precision, device=device, backend="torch")
    column_prompts(start, ColumnPrompts(**config.data.prompts))  # the start model is scored as it is trained
    before = test(start)
    after = test(load_encoder(out / "best", precision=precision, device=device, backend="torch"))
    return AdaptResult(run=result, data=data, test_before=before, test_after=after)
