"""Filter steps by name, so that a recipe can list them.

A recipe's ``[loss]`` section of any InfoNCE-family loss may say::

    mask_duplicates = true                       # the default: MaskDuplicates runs first
    filters = [
        { name = "margin", margin = 0.05, mode = "relative" },
        { name = "top-k", k = 8 },
    ]

Each table names a step of :data:`STEPS` and gives its parameters; :func:`build_steps` turns the list into the
``steps`` tuple that the loss classes take from Python. The names and their parameters:

- ``duplicates``: :class:`~embedkit.losses.steps.MaskDuplicates` (none);
- ``margin``: :class:`~embedkit.losses.steps.MarginFilter` (margin, mode, source);
- ``ceiling``: :class:`~embedkit.losses.steps.ScoreCeiling` (max_score, source);
- ``top-k``: :class:`~embedkit.losses.steps.TopKHardest` (k);
- ``rank-window``: :class:`~embedkit.losses.steps.RankWindow` (start, end).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from embedkit.errors import ConfigError
from embedkit.losses.steps import MarginFilter, MaskDuplicates, RankWindow, ScoreCeiling, Step, TopKHardest
from embedkit.registry import Registry

STEPS: Registry[Callable[..., Step]] = Registry("filter step")
STEPS.register("duplicates", MaskDuplicates)
STEPS.register("margin", MarginFilter)
STEPS.register("ceiling", ScoreCeiling)
STEPS.register("top-k", TopKHardest)
STEPS.register("rank-window", RankWindow)

FilterSpec = Mapping[str, Any]


def step_parameters(name: str) -> dict[str, Any]:
    """The parameters of step ``name`` with their defaults (``inspect.Parameter.empty`` where required)."""
    signature = inspect.signature(STEPS.get(name))
    return {param.name: param.default for param in signature.parameters.values()}


def build_step(spec: FilterSpec) -> Step:
    """One step from ``{"name": ..., **params}``.

    Raises:
        ConfigError: ``spec`` is not a table, has no name, has unknown or missing parameters, or the step
            refuses a value; the message lists what is valid.
        UnknownNameError: the name is not in :data:`STEPS`; the message lists the valid names.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f'a filter must be a table like {{ name = "margin", margin = 0.05 }}, got {spec!r}')
    params = dict(spec)
    name = params.pop("name", None)
    if name is None:
        raise ConfigError(f"a filter needs a name (one of {', '.join(STEPS.names())}), got {dict(spec)!r}")
    factory = STEPS.get(name)
    valid = step_parameters(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        listed = ", ".join(valid) or "none"
        raise ConfigError(f"filter {name!r} has no parameter {', '.join(unknown)}; valid parameters: {listed}")
    missing = [key for key, default in valid.items() if default is inspect.Parameter.empty and key not in params]
    if missing:
        raise ConfigError(f"filter {name!r} needs {', '.join(missing)}")
    try:
        return factory(**params)
    except ConfigError as error:
        raise ConfigError(f"filter {name!r}: {error}") from None


def build_steps(specs: Sequence[FilterSpec]) -> tuple[Step, ...]:
    """The steps of a recipe's ``filters`` list, in order."""
    if isinstance(specs, (str, Mapping)) or not isinstance(specs, Sequence):
        raise ConfigError(f"filters must be a list of tables, got {specs!r}")
    return tuple(build_step(spec) for spec in specs)


def loss_steps(filters: Sequence[FilterSpec] = (), mask_duplicates: bool = True) -> tuple[Step, ...]:
    """The ``steps`` of an InfoNCE-family loss built from a recipe: duplicate masking first, then ``filters``.

    Duplicate masking is on unless asked otherwise because a duplicate text used as its own negative is always
    wrong; a filter list that names ``duplicates`` again is harmless (the step is idempotent).
    """
    head: tuple[Step, ...] = (MaskDuplicates(),) if mask_duplicates else ()
    return head + build_steps(filters)


def with_filters(loss_class: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A registry factory for a loss class that takes ``steps=``: the recipe gives ``filters`` instead.

    The factory has the class's parameters except ``steps``, plus ``filters`` (a list of step tables, default
    none) and ``mask_duplicates`` (default true), so :meth:`LossSpec.parameters` lists them and
    ``embedkit losses`` shows them. The class itself keeps its Python ``steps=`` argument.

    Example:
        >>> LOSSES.register("infonce", LossSpec(name="infonce", factory=with_filters(InfoNCELoss), ...))
        >>> loss = build_loss("infonce", filters=[{"name": "top-k", "k": 4}])
        >>> [type(step).__name__ for step in loss.steps]
        ['MaskDuplicates', 'TopKHardest']
    """
    signature = inspect.signature(loss_class)
    kept = [param for param in signature.parameters.values() if param.name != "steps"]
    added = [
        inspect.Parameter("filters", inspect.Parameter.KEYWORD_ONLY, default=(), annotation="Sequence[FilterSpec]"),
        inspect.Parameter("mask_duplicates", inspect.Parameter.KEYWORD_ONLY, default=True, annotation="bool"),
    ]

    def factory(
        *args: Any, filters: Sequence[FilterSpec] = (), mask_duplicates: bool = True, **params: Any
    ) -> nn.Module:
        return loss_class(*args, **params, steps=loss_steps(filters, mask_duplicates))

    factory.__signature__ = signature.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]
    factory.__name__ = f"{loss_class.__name__}_with_filters"
    factory.__qualname__ = factory.__name__
    factory.__doc__ = f"Build :class:`{loss_class.__name__}` with steps from recipe ``filters``."
    return factory
