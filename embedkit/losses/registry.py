"""The loss registry: :data:`LOSSES` maps a name to a :class:`LossSpec`. Each loss module registers its own."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from embedkit.errors import ConfigError
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

CONTRASTIVE_KINDS = (Kind.SENTENCES, Kind.PAIRS, Kind.TRIPLETS, Kind.PREFERENCE)


def build_loss(name: str, **params: Any) -> nn.Module:
    """Build the loss registered as ``name`` with ``params`` overriding its presets."""
    return LOSSES.get(name).build(**params)


