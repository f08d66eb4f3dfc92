"""Run a training recipe: the glue between a :class:`~embedkit.config.RunConfig` and :func:`embedkit.fit`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from embedkit.config import EvalConfig, RunConfig, config_to_dict
from embedkit.data import read_examples
from embedkit.encoders import load_encoder
from embedkit.errors import ConfigError
from embedkit.eval import CombinedEvaluator, Evaluator, STSEvaluator
from embedkit.eval.preference import PreferenceEvaluator
from embedkit.fsutil import atomic_write_bytes
from embedkit.losses import LOSSES
from embedkit.preference.reward import RewardModelObjective
from embedkit.train import FitResult, fit


def dev_evaluator(config: EvalConfig, loss: Any) -> Evaluator | None:
    """The evaluator of a recipe's ``[eval]`` section for training with ``loss``; ``None`` when it names no set."""
    evaluators: dict[str, Evaluator] = {}
    if config.sts:
        evaluators["sts"] = STSEvaluator(config.sts)
    if config.preference:
        evaluators["preference"] = (
            PreferenceEvaluator(config.preference, mode="reward", reward_head=loss.head)
            if isinstance(loss, RewardModelObjective)
            else PreferenceEvaluator(config.preference)
        )
    if len(evaluators) < 2:
        return next(iter(evaluators.values()), None)
    return CombinedEvaluator(evaluators)


def run_training(config: RunConfig, show_progress: bool = True) -> FitResult:
    """Load the model and data a recipe names, train, and keep the best and final models.

    The resolved recipe is written to ``<output_dir>/recipe.json`` so a run records how it was made.
    """
    if not config.data.path:
        raise ConfigError("the recipe names no training data: set data.path")
    spec = LOSSES.get(config.loss.name)
    loss = spec.build(**config.loss.params)
    examples = read_examples(
        config.data.path,
        kind=config.data.kind,
        columns=config.data.columns or None,
        format=config.data.format,
        limit=config.data.limit,
    )
    kind = examples.kind
    if kind not in spec.kinds:
        raise ConfigError(
            f"loss {spec.name!r} takes {', '.join(k.value for k in spec.kinds)} data, "
            f"but {config.data.path} is {kind.value}"
        )
    evaluator = dev_evaluator(config.eval, loss)
    encoder = load_encoder(
        config.model.name,
        pooling=config.model.pooling,
        mlp_head=config.model.mlp_head,
        max_seq_length=config.model.max_seq_length,
        device=config.model.device,
        precision=config.model.precision,
    )
    settings = dataclasses.replace(config.train, show_progress=show_progress and config.train.show_progress)
    output_dir = Path(settings.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output_dir / "recipe.json", (json.dumps(config_to_dict(config), indent=2) + "\n").encode())
    return fit(encoder, examples, loss, settings, kind=kind, evaluator=evaluator)

