"""Training recipes: frozen dataclasses read from TOML, with ``section.key=value`` overrides, and running them.

A recipe has the sections ``[model]``, ``[data]``, ``[loss]``, ``[train]`` (the fields of
:class:`embedkit.training.fit.FitSettings`) and ``[eval]``. Every key of
``[loss]`` other than ``name`` is a parameter of that loss. Unknown sections and keys are errors that list
the valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedkit.data import read_examples
from embedkit.encoders import DEFAULT_MODEL, load_encoder
from embedkit.errors import ConfigError
from embedkit.eval import CombinedEvaluator, Evaluator, STSEvaluator
from embedkit.eval.preference import PreferenceEvaluator
from embedkit.fsutil import atomic_write_bytes
from embedkit.losses import LOSSES
from embedkit.losses.preference import RewardModelObjective
from embedkit.training.fit import FitResult, FitSettings, fit


@dataclass(frozen=True)
class ModelConfig:
    """Which encoder to start from and how to run it (see :func:`embedkit.load_encoder`)."""

    name: str = DEFAULT_MODEL
    pooling: str | None = None
    mlp_head: bool = False
    max_seq_length: int | None = None
    precision: str = "auto"
    device: str | None = None


@dataclass(frozen=True)
class DataConfig:
    """The training file (see :func:`embedkit.read_examples`)."""

    path: str = ""
    kind: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    format: str | None = None
    limit: int | None = None


@dataclass(frozen=True)
class LossConfig:
    """A registered loss and its parameters."""

    name: str = "infonce"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalConfig:
    """The dev sets evaluated during training (how often: ``train.eval_steps``); the best model is kept.

    ``sts``: an STS file (Spearman). ``preference``: a preference file (accuracy), scored by the reward head when
    the loss is ``reward-bt`` and by prompt-reply similarity otherwise. With both, STS picks the best model, the
    preference metrics are logged beside it, and metric names get the prefixes ``sts/`` and ``preference/``.
    """

    sts: str | None = None
    preference: str | None = None


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: FitSettings = field(default_factory=FitSettings)
    eval: EvalConfig = field(default_factory=EvalConfig)


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "loss": LossConfig,
    "train": FitSettings,
    "eval": EvalConfig,
}


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts, as read from TOML."""
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown recipe section {', '.join(unknown)}; valid sections: {', '.join(_SECTIONS)}")
    sections = {}
    for name in _SECTIONS:
        values = dict(raw.get(name, {}))
        if not isinstance(values, dict):
            raise ConfigError(f"recipe section [{name}] must be a table")
        cls = _SECTIONS[name]
        if cls is LossConfig:
            loss_name = values.pop("name", LossConfig.name)
            params = values.pop("params", {})
            values = {"name": loss_name, "params": {**params, **values}}
        valid = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(values) - valid)
        if bad:
            raise ConfigError(f"unknown key {', '.join(f'{name}.{k}' for k in bad)}; valid keys: {', '.join(sorted(valid))}")
        sections[name] = cls(**values)
    return RunConfig(**sections)


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The nested dict of a config, with loss parameters flattened into ``[loss]`` as in a recipe."""
    raw = dataclasses.asdict(config)
    raw["loss"] = {"name": config.loss.name, **config.loss.params}
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-5"`` -> ``(["train", "lr"], 1e-5)``; values are TOML literals, else plain strings."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(f"an override must look like section.key=value, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``section.key=value`` in a copy of ``raw``."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for text in overrides:
        parts, value = parse_override(text)
        node = raw.setdefault(parts[0], {})
        for part in parts[1:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return raw


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML recipe and apply ``overrides``."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"recipe not found: {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    return config_from_dict(apply_overrides(raw, overrides or []))


# -- running a recipe --------------------------------------------------------------------------------------
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

