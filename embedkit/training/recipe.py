"""Training recipes: frozen dataclasses read from TOML, with ``section.key=value`` overrides, and running them.

A recipe has the sections ``[model]``, ``[data]``, ``[loss]``, ``[train]`` (the fields of
:class:`embedkit.training.fit.FitSettings`), ``[eval]`` and ``[mining]``. Every key of ``[loss]`` other than
``name``, ``matryoshka_dims`` and ``matryoshka_weights`` (which train the loss at several leading-dimension cuts,
:func:`embedkit.losses.matryoshka`) is a parameter of that loss. Unknown sections and keys are errors that list
the valid ones, so a typo never silently falls back to a default.

Every value is checked when the recipe is loaded, before anything is read or trained: against the type of its
field (or, for a loss parameter, the annotation or default of the loss factory's parameter) and against the
range :data:`RULES` gives it. A bad value is a one-line :class:`~embedkit.errors.ConfigError` naming the key,
the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import shutil
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from embedkit import distributed
from embedkit.data import ColumnPrompts, is_beir_folder, read_examples
from embedkit.data.io import FORMATS
from embedkit.encoders import DEFAULT_MODEL, load_encoder
from embedkit.encoders.sentence_transformer import POOLING_MODES
from embedkit.errors import ConfigError, EmbedkitError
from embedkit.eval import EVALUATORS, CombinedEvaluator
from embedkit.fsutil import atomic_write_bytes
from embedkit.index import parse_spec
from embedkit.losses import LOSSES, Objective
from embedkit.losses.matryoshka import check_dims, check_weights, matryoshka, weights_for
from embedkit.losses.steps import build_steps
from embedkit.mining.hard_negatives import DEFAULT_STEPS
from embedkit.precision import PRECISIONS
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
    scoring ``min_relevance`` or more give (query, document) pairs.

    ``prompts`` puts a prompt before the texts of a column: ``{anchor = "query: ", positive = "passage: "}``
    (``negative`` defaults to the positive's). A column it leaves out gets the model's own prompt: its query
    prompt for anchors, its document prompt for positives (see :func:`embedkit.training.fit.column_prompts`); the
    model keeps the anchor's and the positive's as its ``query`` and ``document`` prompts.
    """

    path: str = ""
    kind: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    format: str | None = None
    limit: int | None = None
    split: str = "train"
    min_relevance: int = 1
    prompts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LossConfig:
    """A registered loss and its parameters; with ``matryoshka_dims``, trained at those leading-dimension cuts of
    the embeddings, weighted by ``matryoshka_weights`` (default 1 each)."""

    name: str = "infonce"
    params: dict[str, Any] = field(default_factory=dict)
    matryoshka_dims: tuple[int, ...] | None = None
    matryoshka_weights: tuple[float, ...] | None = None

    def build(self) -> nn.Module:
        """The loss this section describes."""
        loss = LOSSES.get(self.name).build(**self.params)
        if self.matryoshka_dims is None:
            return loss
        return matryoshka(loss, self.matryoshka_dims, self.matryoshka_weights)

    def as_table(self) -> dict[str, Any]:
        """The ``[loss]`` table of a recipe: the name, the parameters, and the Matryoshka keys that are set."""
        wrapper = {key: getattr(self, key) for key in _MATRYOSHKA_KEYS if getattr(self, key) is not None}
        return {"name": self.name, **self.params, **wrapper}


_MATRYOSHKA_KEYS = ("matryoshka_dims", "matryoshka_weights")


DEV_SETS = ("sts", "retrieval", "preference")


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
        if self.primary is not None:  # one of DEV_SETS, as the recipe's checks make sure
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


# -- checking values ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """What a value of the right type must also be: ``test`` says whether it is, ``text`` says it in an error
    after the type ("an integer" + " of at least 1")."""

    test: Callable[[Any], bool]
    text: str


def at_least(low: float) -> Rule:
    return Rule(lambda value: value >= low, f"of at least {low}")


def above(low: float) -> Rule:
    return Rule(lambda value: value > low, f"above {low}")


def within(low: float, high: float) -> Rule:
    return Rule(lambda value: low <= value <= high, f"from {low} to {high}")


def between(low: float, high: float) -> Rule:
    return Rule(lambda value: low < value < high, f"strictly between {low} and {high}")


def one_of(choices: Iterable[str]) -> Rule:
    valid = tuple(choices)
    return Rule(lambda value: value in valid, f"naming one of: {', '.join(valid)}")


def each(rule: Rule) -> Rule:
    return Rule(lambda values: all(rule.test(value) for value in values), f"each {rule.text}")


def parsed_by(parse: Callable[[Any], object], text: str) -> Rule:
    """A rule for values that ``parse`` takes: it raises a :class:`~embedkit.errors.EmbedkitError` saying what is
    wrong with any other, and the recipe error passes that on."""

    def test(value: Any) -> bool:
        parse(value)
        return True

    return Rule(test, text)


def _device(name: str) -> torch.device:
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ConfigError(str(error).splitlines()[0]) from None


PROMPT_COLUMNS = tuple(f.name for f in dataclasses.fields(ColumnPrompts))
_FILTERS = 'naming filters, such as { name = "margin", margin = 0.05 }'

RULES: dict[str, Rule] = {
    "model.pooling": one_of(POOLING_MODES),
    "model.max_seq_length": at_least(1),
    "model.precision": one_of(PRECISIONS),
    "model.device": parsed_by(_device, "naming a device such as cpu, cuda or cuda:1"),
    "data.kind": one_of(kind.value for kind in Kind),
    "data.format": one_of(FORMATS),
    "data.limit": at_least(1),
    "data.prompts": Rule(lambda table: set(table) <= set(PROMPT_COLUMNS), f"keyed by {', '.join(PROMPT_COLUMNS)}"),
    "train.batch_size": at_least(2),  # in-batch negatives need a second row
    "train.lr": above(0),
    "train.epochs": at_least(1),
    "train.max_steps": at_least(1),
    "train.warmup_ratio": within(0, 1),
    "train.weight_decay": at_least(0),
    "train.max_grad_norm": above(0),
    "train.save_steps": at_least(1),
    "train.log_steps": at_least(1),
    "train.eval_steps": at_least(1),
    "train.mini_batch_size": at_least(1),
    "train.max_seq_length": at_least(1),
    "train.interpolation": each(between(0, 1)),  # 0 (the start) and 1 (the final model) are always evaluated
    "eval.primary": one_of(DEV_SETS),
    "mining.negatives": at_least(0),
    "mining.refresh_steps": at_least(0),
    "mining.spec": parsed_by(parse_spec, "naming an index such as torch or faiss:HNSW32"),
    "mining.steps": parsed_by(build_steps, _FILTERS),
    "loss.filters": parsed_by(build_steps, _FILTERS),
    "loss.matryoshka_dims": parsed_by(check_dims, "that are distinct and positive, such as [384, 256, 128, 64, 32]"),
    "loss.matryoshka_weights": parsed_by(check_weights, "each above 0, one per dimension"),
}
"""The range of each ``section.key`` beyond its type; a key not listed takes any value of its type."""


class _WrongType(Exception):
    """A value that is not of the type asked for."""


_NONE = type(None)
_NAMED_TYPES = {"float": float, "int": int, "bool": bool, "str": str, "None": _NONE}
_PLURALS = {bool: "booleans", int: "integers", float: "finite numbers", str: "strings", dict: "tables"}


def _converted(value: Any, hint: Any) -> Any:
    """``value`` as a field of type ``hint`` holds it: an integer for a float becomes a float, a list for a tuple
    a tuple. Raises :class:`_WrongType` for a value of another type (``True`` is no integer, NaN no number)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        for arm in args:
            try:
                return _converted(value, arm)
            except _WrongType:
                continue
    elif origin is tuple:
        if isinstance(value, list | tuple):
            return tuple(_converted(item, args[0]) for item in value)
    elif origin is dict:
        if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
            return {key: _converted(item, args[1]) for key, item in value.items()}
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is Path:
        if isinstance(value, str | os.PathLike):
            return value
    elif isinstance(value, hint):  # bool, str, None
        return value
    raise _WrongType


def _described(hint: Any) -> str:
    """What values of type ``hint`` look like in a recipe: ``"an integer"``, ``"a list of finite numbers"``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_described(arm) for arm in args if arm is not _NONE)  # TOML has no null
    if origin is tuple:
        return f"a list of {_PLURALS[typing.get_origin(args[0]) or args[0]]}"
    if origin is dict:
        return "a table of strings" if args[1] is str else "a table"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", Path: "a path",
            Any: "a value"}[hint]


def _shown(value: Any) -> str:
    """A value as a recipe writes it (``"hot"``, ``8.5``, ``true``, ``nan``), on one line."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value, default=str, ensure_ascii=False)


def checked_value(key: str, value: Any, hint: Any) -> Any:
    """``value`` of the recipe key ``key`` (``section.name``) converted to its type ``hint``.

    Raises:
        ConfigError: the value is of another type, or outside the range :data:`RULES` gives ``key``.
    """
    rule = RULES.get(key)
    invalid = f"recipe value {key} = {_shown(value)} is invalid"
    try:
        converted = _converted(value, hint)
        fits = converted is None or rule is None or rule.test(converted)
    except _WrongType:
        fits = False
    except EmbedkitError as error:  # a parser's own account of what is wrong
        raise ConfigError(f"{invalid}: {error}") from None
    if not fits:
        allowed = _described(hint) + (f" {rule.text}" if rule is not None else "")
        raise ConfigError(f"{invalid}: expected {allowed}")
    return converted


def _section_table(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The ``[name]`` table of a recipe (empty when it has none)."""
    values = raw.get(name, {})
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"recipe section {name} = {_shown(values)} is invalid: expected a table ([{name}] followed by key = value "
            "lines)"
        )
    return dict(values)


def _loss_table(values: dict[str, Any]) -> dict[str, Any]:
    """A ``[loss]`` table as :class:`LossConfig` takes it: the name, the Matryoshka keys, and every other key a
    parameter."""
    params = values.pop("params", {})
    if not isinstance(params, Mapping):
        raise ConfigError(f"recipe value loss.params = {_shown(params)} is invalid: expected a table")
    wrapper = {key: values.pop(key) for key in _MATRYOSHKA_KEYS if key in values}
    return {"name": values.pop("name", LossConfig.name), "params": {**params, **values}, **wrapper}


def _built_section(name: str, cls: type, values: dict[str, Any]) -> Any:
    """The section dataclass ``cls`` of ``[name]`` with every value checked against the type of its field."""
    hints = typing.get_type_hints(cls)
    bad = sorted(set(values) - set(hints))
    if bad:
        keys = ", ".join(f"{name}.{k}" for k in bad)
        raise ConfigError(f"unknown key {keys}; valid keys: {', '.join(sorted(hints))}")
    return cls(**{key: checked_value(f"{name}.{key}", value, hints[key]) for key, value in values.items()})


def _checked_loss(config: LossConfig) -> LossConfig:
    """``config`` with every parameter checked against the loss factory's parameter of that name."""
    spec = LOSSES.get(config.name)
    valid = spec.parameters()
    unknown = sorted(set(config.params) - set(valid))
    if unknown:
        raise ConfigError(
            f"loss {spec.name!r} has no parameter {', '.join(unknown)}; valid parameters: {', '.join(valid)}"
        )
    parameters = inspect.signature(spec.factory).parameters
    params = {key: checked_value(f"loss.{key}", value, _parameter_type(parameters[key]))
              for key, value in config.params.items()}
    if config.matryoshka_weights is not None:
        if config.matryoshka_dims is None:
            raise ConfigError("recipe value loss.matryoshka_weights is set without loss.matryoshka_dims: "
                              "give the dimensions the weights are for")
        try:
            weights_for(config.matryoshka_dims, config.matryoshka_weights)
        except ConfigError as error:
            raise ConfigError(f"recipe value loss.matryoshka_weights = {_shown(config.matryoshka_weights)} is "
                              f"invalid: {error}") from None
    return dataclasses.replace(config, params=params)


def _parameter_type(parameter: inspect.Parameter) -> Any:
    """The type a loss parameter takes from a recipe: its annotation when made of float, int, bool, str and None
    (loss modules postpone annotations, so these are strings), else the type of its default; ``Any`` for a
    parameter that takes objects too (a guide model, filter tables), which the loss checks itself."""
    annotation = parameter.annotation
    if isinstance(annotation, str):
        arms = [_NAMED_TYPES.get(arm.strip()) for arm in annotation.split("|")]
        return Any if None in arms else Union[tuple(arms)]  # noqa: UP007  (a union built at run time)
    if isinstance(parameter.default, bool | int | float | str):
        return type(parameter.default)
    return Any


def config_from_dict(raw: Mapping[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts, as read from TOML, checking every value.

    Raises:
        ConfigError: an unknown section or key, a section that is not a table, a value of the wrong type or out
            of range (see :func:`checked_value`), or dev sets that do not fit together.
        UnknownNameError: an unknown loss name; the message lists the valid ones.
    """
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown recipe section {', '.join(unknown)}; valid sections: {', '.join(_SECTIONS)}")
    sections = {}
    for name, cls in _SECTIONS.items():
        values = _section_table(raw, name)
        if cls is LossConfig:
            values = _loss_table(values)
        sections[name] = _built_section(name, cls, values)
    config = RunConfig(**sections)
    config = dataclasses.replace(config, loss=_checked_loss(config.loss))
    config.eval.sets()  # the primary dev set must be one the recipe gives
    return config


def check_config(config: RunConfig) -> None:
    """Check a config built in Python as :func:`config_from_dict` checks a recipe."""
    raw = {name: {f.name: getattr(getattr(config, name), f.name) for f in dataclasses.fields(cls)}
           for name, cls in _SECTIONS.items()}
    raw["loss"] = config.loss.as_table()
    config_from_dict(raw)


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The nested dict of a config, with loss parameters flattened into ``[loss]`` as in a recipe."""
    raw = dataclasses.asdict(config)
    raw["loss"] = config.loss.as_table()
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
    """Set each ``section.key=value`` in a copy of ``raw``.

    Raises:
        ConfigError: an override is malformed, or reaches into a value that is not a table
            (``train.lr.x=1``).
    """
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for depth, part in enumerate(parts[:-1], start=1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                key = ".".join(parts[:depth])
                raise ConfigError(
                    f"cannot apply the override {text!r}: {key} = {_shown(node)} is a value, not a table"
                )
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
    check_config(config)
    if not config.data.path:
        raise ConfigError("the recipe names no training data: set data.path")
    spec = LOSSES.get(config.loss.name)
    loss = config.loss.build()
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
        backend="torch",  # the model is trained: fit encodes in torch, and nothing here runs it otherwise
    )
    dims = config.loss.matryoshka_dims
    if dims is not None and max(dims) > encoder.dim:
        raise ConfigError(f"recipe value loss.matryoshka_dims = {_shown(list(dims))} is invalid: {max(dims)} exceeds "
                          f"the {encoder.dim} dimensions of model {config.model.name!r}")
    settings = dataclasses.replace(config.train, show_progress=show_progress and config.train.show_progress)
    prepare_output_dir(config, overwrite, write=distributed.is_main_process())
    distributed.barrier()
    source = f"{config.data.path} ({kind.value}, {len(examples)} rows)"
    return fit(encoder, examples, loss, settings, kind=kind, evaluator=evaluator, source=source, negatives=negatives,
               prompts=ColumnPrompts(**config.data.prompts))


def negative_miner(config: RunConfig) -> NegativeMiner | None:
    """The miner of a recipe's ``[mining]`` section, or ``None`` when it mines nothing."""
    mining = config.mining
    if mining.negatives == 0:
        return None
    corpus = mining.corpus or (config.data.path if is_beir_folder(config.data.path) else None)
    return NegativeMiner(corpus=corpus, num_negatives=mining.negatives, steps=mining.steps,
                         every=mining.refresh_steps, spec=mining.spec)
