"""Losses, found by name in :data:`LOSSES`.

Every loss is an ``nn.Module`` whose ``forward`` takes an :class:`~embedkit.types.EmbeddedBatch` and returns a
scalar. A :class:`LossSpec` says which data kinds the loss takes, where it comes from and which preset
parameters it has.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from embedkit.errors import ConfigError
from embedkit.losses.infonce import InfoNCELoss, cosine_table, info_nce_from_scores
from embedkit.losses.steps import (
    MarginFilter,
    MaskDuplicates,
    RankWindow,
    ScoreCeiling,
    Step,
    TopKHardest,
    apply_steps,
)
from embedkit.registry import Registry
from embedkit.types import Kind


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: how to build it and what it is for."""

    name: str
    factory: Callable[..., nn.Module]
    summary: str
    kinds: tuple[Kind, ...]
    reference: str
    presets: dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> dict[str, Any]:
        """Every recipe parameter of the loss with its default (presets override the factory's defaults).

        Filter steps are objects, not recipe values, so they are not listed here.
        """
        signature = inspect.signature(self.factory)
        defaults = {
            name: param.default
            for name, param in signature.parameters.items()
            if name != "steps" and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
        }
        return {**defaults, **self.presets}

    def build(self, **params: Any) -> nn.Module:
        valid = self.parameters()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ConfigError(
                f"loss {self.name!r} has no parameter {', '.join(unknown)}; valid parameters: {', '.join(valid)}"
            )
        return self.factory(**{**self.presets, **params})


LOSSES: Registry[LossSpec] = Registry("loss")

_ALL_CONTRASTIVE = (Kind.SENTENCES, Kind.PAIRS, Kind.TRIPLETS, Kind.PREFERENCE)

LOSSES.register(
    "infonce",
    LossSpec(
        name="infonce",
        factory=InfoNCELoss,
        summary="InfoNCE over in-batch negatives plus any hard negatives; optional symmetric term",
        kinds=_ALL_CONTRASTIVE,
        reference="van den Oord et al., 2018, Representation Learning with Contrastive Predictive Coding",
    ),
)
LOSSES.register(
    "simcse-unsup",
    LossSpec(
        name="simcse-unsup",
        factory=InfoNCELoss,
        summary="unsupervised SimCSE: two dropout views of each sentence are positives, temperature 0.05",
        kinds=(Kind.SENTENCES,),
        reference="Gao et al., 2021, SimCSE: Simple Contrastive Learning of Sentence Embeddings",
        presets={"temperature": 0.05, "symmetric": False},
    ),
)
LOSSES.register(
    "simcse-sup",
    LossSpec(
        name="simcse-sup",
        factory=InfoNCELoss,
        summary="supervised SimCSE: entailment positive, contradiction hard negative, temperature 0.05",
        kinds=(Kind.TRIPLETS, Kind.PREFERENCE),
        reference="Gao et al., 2021, SimCSE: Simple Contrastive Learning of Sentence Embeddings",
        presets={"temperature": 0.05, "symmetric": False},
    ),
)


def build_loss(name: str, **params: Any) -> nn.Module:
    """Build the loss registered as ``name`` with ``params`` overriding its presets."""
    return LOSSES.get(name).build(**params)


__all__ = [
    "LOSSES",
    "InfoNCELoss",
    "LossSpec",
    "MarginFilter",
    "MaskDuplicates",
    "RankWindow",
    "ScoreCeiling",
    "Step",
    "TopKHardest",
    "apply_steps",
    "build_loss",
    "cosine_table",
    "info_nce_from_scores",
]
