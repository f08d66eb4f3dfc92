"""Steps over a score table: ``Scores -> Scores``, and the names that recipes and mining give them.

A step only shrinks the ``valid`` mask or changes ``log_weights``; it never touches a row's target. The same
steps run in-batch during training and offline when mining hard negatives from an index, so every filter
rule is written once, here.

Filters that judge "too similar to be a true negative" (margins, ceilings) compare against either the
table's own ``values`` or, when ``source="guide"``, the similarities of a frozen guide model stored in
``Scores.guide`` (GISTEmbed).

A recipe's ``[loss]`` section of any InfoNCE-family loss may say::

    mask_duplicates = true                       # the default: MaskDuplicates runs first
    filters = [
        { name = "margin", margin = 0.05, mode = "relative" },
        { name = "top-k", k = 8 },
    ]

Each table names a step of :data:`STEPS` and gives its parameters; :func:`build_steps` turns the list into the
``steps`` tuple that the loss classes take from Python. Hard-negative mining takes the same tables
(:func:`~embedkit.mining.mine_hard_negatives`'s ``steps``). The names and their parameters:

- ``duplicates``: :class:`~embedkit.losses.steps.MaskDuplicates` (none);
- ``margin``: :class:`~embedkit.losses.steps.MarginFilter` (margin, mode, source);
- ``ceiling``: :class:`~embedkit.losses.steps.ScoreCeiling` (max_score, source);
- ``top-k``: :class:`~embedkit.losses.steps.TopKHardest` (k);
- ``rank-window``: :class:`~embedkit.losses.steps.RankWindow` (start, end).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from embedkit.errors import ConfigError
from embedkit.registry import Registry
from embedkit.types import Scores

MarginMode = Literal["absolute", "relative"]
ScoreSource = Literal["values", "guide"]
MARGIN_MODES = ("absolute", "relative")
SCORE_SOURCES = ("values", "guide")


class Step(Protocol):
    """A transformation of a score table that keeps every row's target valid."""

    def __call__(self, scores: Scores) -> Scores: ...


def _negatives_only(scores: Scores, drop: Tensor) -> Scores:
    """Invalidate ``drop`` ``[B, C]`` except at the targets."""
    return scores.replace(valid=scores.valid & ~(drop & ~scores.target_mask()))


def _table(scores: Scores, source: str) -> Tensor:
    if source not in SCORE_SOURCES:
        raise ConfigError(f"unknown score source {source!r}; valid: {', '.join(SCORE_SOURCES)}")
    if source == "guide":
        if scores.guide is None:
            raise ConfigError("this step reads guide scores, but the score table has none (no guide model set)")
        return scores.guide
    return scores.values


class MaskDuplicates:
    """Never use as a negative a candidate that has the same text as the row's anchor or positive, or that is the
    positive of another row with the same anchor.

    In a batch of unsupervised sentences the same sentence may occur twice; without this step the second copy
    would be a negative of the first, pushing apart two identical texts. In a batch of (query, relevant
    document) pairs a query judged relevant to several documents may occur in several rows; each of its
    documents is a positive of every such row, never a negative (sentence-transformers avoids both with a
    no-duplicates batch sampler, which defers such rows to a later batch instead). Needs the group ids that
    :func:`embedkit.data.collate` assigns (one id per distinct text).
    """

    def __call__(self, scores: Scores) -> Scores:
        if scores.anchor_groups is None or scores.candidate_groups is None:
            raise ConfigError("MaskDuplicates needs anchor_groups and candidate_groups in the score table")
        positive_groups = scores.candidate_groups[scores.targets]  # [B]
        has_positive = scores.candidate_groups[None, :] == positive_groups[:, None]  # [B, C]: row's positive text
        # pooled per distinct anchor and handed back to each of its rows: O(B C), where a memory queue makes C large
        _, anchor_ids = torch.unique(scores.anchor_groups, return_inverse=True)  # [B], below B
        pooled = torch.zeros_like(has_positive, dtype=torch.float32)  # [B, C]: a row per distinct anchor, at most B
        positive_of_same_anchor = pooled.index_add_(0, anchor_ids, has_positive.float())[anchor_ids] > 0  # [B, C]
        is_anchor = scores.candidate_groups[None, :] == scores.anchor_groups[:, None]  # [B, C]
        return _negatives_only(scores, positive_of_same_anchor | is_anchor)


class MarginFilter:
    """Drop negatives that score too close to (or above) the row's positive: likely false negatives.

    With ``p`` the positive's score and ``s`` a negative's score (from ``source``):

    - ``absolute``: drop when ``s > p - margin`` (sentence-transformers' ``absolute_margin``; GISTEmbed's
      ``margin_strategy="absolute"``);
    - ``relative``: drop when ``s > p * (1 - margin)`` (``relative_margin``; GISTEmbed's ``"relative"``).

    Args:
        margin: the margin; ``0`` drops negatives that score above the positive.
        mode: ``"absolute"`` or ``"relative"``.
        source: ``"values"`` (the trained model's scores) or ``"guide"`` (a frozen guide model's, GISTEmbed).
    """

    def __init__(self, margin: float = 0.0, mode: MarginMode = "absolute", source: ScoreSource = "values") -> None:
        if mode not in MARGIN_MODES:
            raise ConfigError(f"unknown margin mode {mode!r}; valid: {', '.join(MARGIN_MODES)}")
        if source not in SCORE_SOURCES:
            raise ConfigError(f"unknown score source {source!r}; valid: {', '.join(SCORE_SOURCES)}")
        if mode == "relative" and not 0 <= margin < 1:
            raise ConfigError(f"a relative margin must be in [0, 1), got {margin}")
        self.margin = margin
        self.mode = mode
        self.source = source

    def __call__(self, scores: Scores) -> Scores:
        table = _table(scores, self.source)
        positive = table.gather(1, scores.targets[:, None])  # [B, 1]
        if self.mode == "absolute":
            limit = positive - self.margin
        else:
            limit = positive * (1 - self.margin)
        return _negatives_only(scores, table > limit)

    def __repr__(self) -> str:
        return f"MarginFilter(margin={self.margin}, mode={self.mode!r}, source={self.source!r})"


class ScoreCeiling:
    """Drop negatives scoring above ``max_score``: so similar that they are probably paraphrases.

    Args:
        max_score: the highest score a negative may have (cosine: at most 1).
        source: ``"values"`` or ``"guide"``.
    """

    def __init__(self, max_score: float, source: ScoreSource = "values") -> None:
        if source not in SCORE_SOURCES:
            raise ConfigError(f"unknown score source {source!r}; valid: {', '.join(SCORE_SOURCES)}")
        self.max_score = max_score
        self.source = source

    def __call__(self, scores: Scores) -> Scores:
        return _negatives_only(scores, _table(scores, self.source) > self.max_score)

    def __repr__(self) -> str:
        return f"ScoreCeiling(max_score={self.max_score}, source={self.source!r})"


def _negative_ranks(scores: Scores) -> Tensor:
    """``[B, C]`` long: the rank (0 = hardest) of each valid negative among the row's valid negatives.

    Targets and invalid candidates get a rank of ``C`` (beyond any window). Ties break by column index.
    """
    negative = scores.valid & ~scores.target_mask()
    keyed = scores.values.detach().masked_fill(~negative, float("-inf"))
    order = keyed.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks.masked_fill(~negative, order.shape[1])


class TopKHardest:
    """Keep only the ``k`` highest-scoring valid negatives of each row (after any earlier filters)."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        self.k = k

    def __call__(self, scores: Scores) -> Scores:
        return _negatives_only(scores, _negative_ranks(scores) >= self.k)

    def __repr__(self) -> str:
        return f"TopKHardest(k={self.k})"


class RankWindow:
    """Keep the negatives ranked ``start <= rank < end`` by score (0 = hardest), as in hard-negative mining's
    ``--range 10:100``: skipping the very top ranks avoids most unlabelled positives."""

    def __init__(self, start: int = 0, end: int | None = None) -> None:
        if start < 0 or (end is not None and end <= start):
            raise ConfigError(f"a rank window needs 0 <= start < end, got {start}:{end}")
        self.start = start
        self.end = end

    def __call__(self, scores: Scores) -> Scores:
        ranks = _negative_ranks(scores)
        drop = ranks < self.start
        if self.end is not None:
            drop |= ranks >= self.end
        return _negatives_only(scores, drop)

    def __repr__(self) -> str:
        return f"RankWindow(start={self.start}, end={self.end})"


def apply_steps(scores: Scores, steps: Sequence[Step]) -> Scores:
    """Run ``steps`` left to right."""
    for step in steps:
        scores = step(scores)
    return scores


# -- steps by name (recipes, the mining CLI) ------------------------------------------------------------
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


def build_step(spec: FilterSpec, *, default_source: ScoreSource = "values") -> Step:
    """One step from ``{"name": ..., **params}``.

    ``default_source`` is the ``source`` of a step that reads one (margin, ceiling) when ``spec`` names none:
    hard-negative mining with a guide model passes ``"guide"``.

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
    if "source" in valid:
        params.setdefault("source", default_source)
    try:
        return factory(**params)
    except ConfigError as error:
        raise ConfigError(f"filter {name!r}: {error}") from None


def build_steps(specs: Sequence[FilterSpec], *, default_source: ScoreSource = "values") -> tuple[Step, ...]:
    """The steps of a recipe's ``filters`` list, in order; ``default_source`` as in :func:`build_step`."""
    if isinstance(specs, (str, Mapping)) or not isinstance(specs, Sequence):
        raise ConfigError(f"filters must be a list of tables, got {specs!r}")
    return tuple(build_step(spec, default_source=default_source) for spec in specs)


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
    factory.__module__ = loss_class.__module__  # where the loss is defined, as `embedkit losses` shows
    factory.__doc__ = f"Build :class:`{loss_class.__name__}` with steps from recipe ``filters``."
    return factory
