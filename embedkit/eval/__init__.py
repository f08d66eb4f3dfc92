"""Evaluators: callables ``evaluator(encoder) -> dict[str, float]`` with a ``primary_metric``, found by name."""

from __future__ import annotations

from embedkit.eval.sts import STSEvaluator, sts_spearman
from embedkit.registry import Registry

EVALUATORS: Registry[type] = Registry("evaluator")
EVALUATORS.register("sts", STSEvaluator)


def evaluate_sts(encoder, path, columns: dict[str, str] | None = None, batch_size: int = 64) -> dict[str, float]:
    """Spearman x100 of cosine similarity on an STS file or folder (see :class:`STSEvaluator`)."""
    return STSEvaluator(path, columns=columns, batch_size=batch_size)(encoder)


__all__ = ["EVALUATORS", "STSEvaluator", "evaluate_sts", "sts_spearman"]
