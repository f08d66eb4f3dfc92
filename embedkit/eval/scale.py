"""The scale of embedkit's scores, which every JSON output holding scores states.

embedkit gives scores that are fractions (correlations, accuracies, retrieval measures, calibration errors and
mteb's scores) x100, as SentEval and the SimCSE papers do; mteb and sentence-transformers give them in ``[0, 1]``.
A JSON output carries :func:`scale_fields`: ``"scale": 100`` (a score divided by it is the ``[0, 1]`` value) and
``"unscaled"``, the names of its metrics that have units of their own (geometry, margins, losses, counts), which
are never scaled.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

SCORE_SCALE = 100
UNSCALED_METRICS = frozenset({"alignment", "uniformity", "anisotropy", "mean_margin", "log_loss", "n", "ties"})
"""Metric names (the last part of ``section/entry/name``) whose values have units of their own."""


def scale_fields(metrics: Iterable[str]) -> dict[str, int | list[str]]:
    """``{"scale": 100, "unscaled": [...]}``: what a JSON output holding ``metrics`` (``name``, or a report's
    ``section/entry/name``) says of their scale."""
    unscaled = {metric for metric in metrics if metric.rpartition("/")[2] in UNSCALED_METRICS}
    return {"scale": SCORE_SCALE, "unscaled": sorted(unscaled)}


@runtime_checkable
class ScaledScores(Protocol):
    """An evaluator whose scores follow this convention (``score_scale`` is :data:`SCORE_SCALE`), as every
    evaluator of :mod:`embedkit.eval` does; what a log of its metrics can say with :func:`scale_fields`."""

    score_scale: int
