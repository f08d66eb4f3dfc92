"""Evaluators: callables ``evaluator(encoder) -> dict[str, float]`` with a ``primary_metric`` and
``higher_is_better`` (the :class:`~embedkit.types.Evaluator` protocol), found by name in :data:`EVALUATORS`.

Recipes' ``[eval]`` sections and report suites both build their evaluators from that one table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from embedkit.data.beir import EmptyQuerySetError, UnknownIdError, read_beir
from embedkit.errors import ConfigError
from embedkit.eval.geometry import GeometryEvaluator, alignment, anisotropy, uniformity
from embedkit.eval.preference import PreferenceEvaluator
from embedkit.eval.retrieval import RetrievalEvaluator
from embedkit.eval.scale import SCORE_SCALE, ScaledScores
from embedkit.eval.sts import STSEvaluator, sts_spearman
from embedkit.registry import Registry
from embedkit.types import Evaluator, TextEncoder


class CombinedEvaluator:
    """Several evaluators run as one: their metrics merged, the primary metric the first evaluator's.

    ``CombinedEvaluator([sts, geometry])`` passed to :func:`embedkit.fit` keeps the best model by STS and logs the
    geometry at every evaluation. Given a mapping ``{name: evaluator}``, every metric is prefixed ``name/``;
    given a sequence, metric names are kept and two evaluators reporting the same name are an error.
    """

    def __init__(self, evaluators: Sequence[Evaluator] | Mapping[str, Evaluator]) -> None:
        if not evaluators:
            raise ConfigError("CombinedEvaluator needs at least one evaluator")
        if isinstance(evaluators, Mapping):
            self.evaluators: list[tuple[str, Evaluator]] = [(f"{name}/", e) for name, e in evaluators.items()]
        else:
            self.evaluators = [("", e) for e in evaluators]
        prefix, first = self.evaluators[0]
        self.primary_metric = prefix + first.primary_metric
        self.higher_is_better = first.higher_is_better
        if all(isinstance(e, ScaledScores) for _, e in self.evaluators):
            self.score_scale = SCORE_SCALE  # its metrics follow embedkit's scale only when every part's do

    def __call__(self, encoder: TextEncoder) -> dict[str, float]:
        merged: dict[str, float] = {}
        for prefix, evaluator in self.evaluators:
            for name, value in evaluator(encoder).items():
                key = prefix + name
                if key in merged:
                    raise ConfigError(
                        f"two evaluators report {key!r}; "
                        "pass them as a mapping {name: evaluator} to prefix their metrics"
                    )
                merged[key] = value
        return merged


def _mteb_evaluator(
    tasks: Sequence[str],
    local_tasks: str | os.PathLike[str] | None = None,
    task_source: str = "auto",
    batch_size: int = 64,
) -> Evaluator:
    """:class:`~embedkit.eval.mteb_adapter.MtebEvaluator`, imported on use: mteb is an optional dependency."""
    from embedkit.eval.mteb_adapter import MtebEvaluator

    return MtebEvaluator(tasks, local_tasks=local_tasks, task_source=task_source, batch_size=batch_size)


EVALUATORS: Registry[Callable[..., Evaluator]] = Registry("evaluator")
EVALUATORS.register("sts", STSEvaluator)
EVALUATORS.register("retrieval", RetrievalEvaluator)
EVALUATORS.register("geometry", GeometryEvaluator)
EVALUATORS.register("mteb", _mteb_evaluator)
EVALUATORS.register("preference", PreferenceEvaluator)


def evaluate_sts(
    encoder: TextEncoder, path, columns: dict[str, str] | None = None, batch_size: int = 64
) -> dict[str, float]:
    """Spearman x100 of cosine similarity on an STS file or folder (see :class:`STSEvaluator`)."""
    return STSEvaluator(path, columns=columns, batch_size=batch_size)(encoder)


def evaluate_retrieval(
    encoder: TextEncoder, folder, split: str = "test", index_spec: str = "torch", k: int = 100
) -> dict[str, float]:
    """nDCG@10, MRR@10, recall@k and MAP (x100) on a BEIR folder (see :class:`RetrievalEvaluator`)."""
    return RetrievalEvaluator(folder, split=split, index_spec=index_spec, k=k)(encoder)


__all__ = [
    "EVALUATORS",
    "CombinedEvaluator",
    "EmptyQuerySetError",
    "Evaluator",
    "GeometryEvaluator",
    "PreferenceEvaluator",
    "RetrievalEvaluator",
    "STSEvaluator",
    "UnknownIdError",
    "alignment",
    "anisotropy",
    "evaluate_retrieval",
    "evaluate_sts",
    "read_beir",
    "sts_spearman",
    "uniformity",
]
