"""Training recipes: frozen dataclasses read from TOML, with ``section.key=value`` overrides, and running them.

A recipe has the sections ``[model]``, ``[data]``, ``[loss]``, ``[train]`` (the fields of
:class:`embedkit.training.fit.FitSettings`), ``[eval]`` and ``[mining]``. Every key of ``[loss]`` other than
``name`` is a parameter of that loss. Unknown sections and keys are errors that list
the valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from embedkit import distributed
from embedkit.data import is_beir_folder, read_examples
from embedkit.encoders import DEFAULT_MODEL, load_encoder
from embedkit.errors import ConfigError
from embedkit.eval import EVALUATORS, CombinedEvaluator
from embedkit.fsutil import atomic_write_bytes
from embedkit.losses import LOSSES, Objective
from embedkit.mining.hard_negatives import DEFAULT_STEPS
from embedkit.training.fit import FitResult, FitSettings, fit
from embedkit.training.negatives import NegativeMiner
from embedkit.types import Evaluator, Kind


@dataclass(frozen=True)
class ModelConfig:
    """Which encoder to start from and how to run it (see :func:`embedkit.load_encoder`).

    ``max_seq_length`` changes the model's inference length, which saved models keep; to truncate inputs in
    training only (SimCSE's 32 tokens), set ``train.max_seq_length``.
    """

    name: str = DEFAULT_MODEL
    pooling: str | None = None
    mlp_head: bool = False
    max_seq_length: int | None = None
    precision: str = "auto"
    device: str | None = None


@dataclass(frozen=True)
class DataConfig:
    """The training data (see :func:`embedkit.read_examples`): a file, or a BEIR folder whose ``split`` judgements
    scoring ``min_relevance`` or more give (query, document) pairs."""

    path: str = ""
    kind: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    format: str | None = None
    limit: int | None = None
    split: str = "train"
    min_relevance: int = 1


@dataclass(frozen=True)
class LossConfig:
    """A registered loss and its parameters."""

    name: str = "infonce"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalConfig:
    """The dev sets evaluated during training (how often: ``train.eval_steps``); the best model is kept.

    ``sts``: an STS file (Spearman). ``retrieval``: a BEIR folder, its queries of split ``retrieval_split``
    searched over its corpus (nDCG@10). ``preference``: a preference file (accuracy), scored by the reward head
    when the objective trains one (``reward-bt``) and by prompt-reply similarity otherwise. ``primary`` names the
    set whose primary metric picks the best model (default: the first given of sts, retrieval, preference); with
    several sets the others are logged beside it, and metric names get the prefixes ``sts/``, ``retrieval/`` and
    ``preference/``.
    """

    sts: str | None = None
    retrieval: str | None = None
    retrieval_split: str = "dev"
    preference: str | None = None
    primary: str | None = None

    def sets(self) -> dict[str, dict[str, str]]:
        """``{evaluator name: its options}`` for the dev sets given, the primary one first."""
        given = {
            "sts": {"path": self.sts},
            "retrieval": {"folder": self.retrieval, "split": self.retrieval_split},
            "preference": {"path": self.preference},
        }
        sets = {name: options for name, options in given.items() if next(iter(options.values()))}
        if self.primary is not None:
            if self.primary not in given:
                raise ConfigError(f"eval.primary must be one of {', '.join(given)}, got {self.primary!r}")
            if self.primary not in sets:
                raise ConfigError(f"eval.primary is {self.primary!r}, but the recipe gives no eval.{self.primary} set")
            sets = {self.primary: sets.pop(self.primary), **sets}
        return sets


@dataclass(frozen=True)
class MiningConfig:
    """Hard negatives mined during training with the model being trained (see
    :mod:`embedkit.training.negatives`); ``negatives = 0``, the default, mines nothing.

    ``corpus``: the documents to mine from; default: the training data's own corpus when ``data.path`` is a BEIR
    folder, else the distinct positives. ``steps``: filter step tables (default: a relative margin of 0.05 and
    ranks 10 to 100). ``refresh_steps``: mine again every this many steps (``0``: once, before training).
    ``spec``: the index searched.
    """

    negatives: int = 0
    corpus: str | None = None
    steps: tuple[dict[str, Any], ...] = field(default_factory=lambda: tuple(dict(step) for step in DEFAULT_STEPS))
    refresh_steps: int = 0
    spec: str = "torch"


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: FitSettings = field(default_factory=FitSettings)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "loss": LossConfig,
    "train": FitSettings,
    "eval": EvalConfig,
    "mining": MiningConfig,
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
            keys = ", ".join(f"{name}.{k}" for k in bad)
            raise ConfigError(f"unknown key {keys}; valid keys: {', '.join(sorted(valid))}")
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
def dev_evaluator(config: EvalConfig, loss: nn.Module) -> Evaluator | None:
    """The evaluator of a recipe's ``[eval]`` section for training with ``loss``; ``None`` when it names no set.

    Evaluators come from :data:`embedkit.eval.EVALUATORS`; an objective adds the options only it can give (a
    reward head to score preferences with) through :meth:`~embedkit.losses.Objective.eval_options`.
    """
    extra = loss.eval_options() if isinstance(loss, Objective) else {}
    evaluators = {
        name: EVALUATORS.get(name)(**options, **extra.get(name, {})) for name, options in config.sets().items()
    }
    if len(evaluators) < 2:
        return next(iter(evaluators.values()), None)
    return CombinedEvaluator(evaluators)


RECIPE_FILE = "recipe.json"


def recipe_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``section.key: old -> new`` for every value that differs between two nested recipe dicts."""
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changes += recipe_changes(before, after, f"{prefix}{key}.")
        elif before != after:
            changes.append(f"{prefix}{key}: {before!r} -> {after!r}")
    return changes


def prepare_output_dir(config: RunConfig, overwrite: bool = False, write: bool = True) -> Path:
    """Make ``train.output_dir`` ready for ``config``: a new run, the resumption of the same recipe, or (with
    ``overwrite``) a fresh start over an earlier run of another one.

    ``recipe.json`` is written when a run starts, and never rewritten by a resumed run, so the folder always
    says how its model was made. ``write=False`` only checks (the processes other than rank 0 under torchrun).

    Raises:
        ConfigError: the folder holds a run of a different recipe and ``overwrite`` is not set; the message names
            the keys that differ.
    """
    output_dir = Path(config.train.output_dir)
    recorded = output_dir / RECIPE_FILE
    resolved = json.loads(json.dumps(config_to_dict(config)))  # as JSON would read it back: lists, not tuples
    resolved["train"].pop("show_progress", None)  # how a run is watched is not how its model is made
    if recorded.is_file() and not overwrite:
        changes = recipe_changes(json.loads(recorded.read_text()), resolved)
        if changes:
            raise ConfigError(
                f"{output_dir} holds a run of another recipe ({'; '.join(changes)}): pass --overwrite to start it "
                "again from scratch, or set another train.output_dir"
            )
        return output_dir
    if not write:
        return output_dir
    if overwrite and output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(recorded, (json.dumps(resolved, indent=2) + "\n").encode())
    return output_dir


def run_training(config: RunConfig, show_progress: bool = True, overwrite: bool = False) -> FitResult:
    """Load the model and data a recipe names, train, and keep the best and final models.

    The resolved recipe is written to ``<output_dir>/recipe.json`` so a run records how it was made; running a
    recipe into a folder that holds a run of the same recipe resumes it (see :func:`prepare_output_dir`).
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
        split=config.data.split,
        limit=config.data.limit,
        min_relevance=config.data.min_relevance,
    )
    kind = examples.kind
    if kind not in spec.kinds:
        raise ConfigError(
            f"loss {spec.name!r} takes {', '.join(k.value for k in spec.kinds)} data, "
            f"but {config.data.path} is {kind.value}"
        )
    negatives = negative_miner(config)
    if negatives is not None and Kind.TRIPLETS not in spec.kinds:
        raise ConfigError(f"loss {spec.name!r} takes no hard negatives; [mining] needs a loss that takes triplets")
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
    prepare_output_dir(config, overwrite, write=distributed.is_main_process())
    distributed.barrier()
    source = f"{config.data.path} ({kind.value}, {len(examples)} rows)"
    return fit(encoder, examples, loss, settings, kind=kind, evaluator=evaluator, source=source, negatives=negatives)


def negative_miner(config: RunConfig) -> NegativeMiner | None:
    """The miner of a recipe's ``[mining]`` section, or ``None`` when it mines nothing."""
    mining = config.mining
    if mining.negatives == 0:
        return None
    if mining.negatives < 0 or mining.refresh_steps < 0:
        raise ConfigError("mining.negatives and mining.refresh_steps must be 0 or more")
    corpus = mining.corpus or (config.data.path if is_beir_folder(config.data.path) else None)
    return NegativeMiner(corpus=corpus, num_negatives=mining.negatives, steps=mining.steps,
                         every=mining.refresh_steps, spec=mining.spec)
