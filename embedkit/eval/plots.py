"""Report figures: STS predicted-vs-gold scatter, alignment vs uniformity, training curves, metric against
embedding dimensions.

Each function returns a :class:`matplotlib.figure.Figure` built without pyplot, so no GUI backend is ever
touched (a headless server, a test, a notebook all render the same way through Agg); :func:`save_figure` writes
it as a PNG. Several models go side by side in one figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.errors import MissingDependencyError

try:  # matplotlib is optional (the eval extra): without it, importing this module is a one-line error
    from matplotlib.figure import Figure
except ImportError as error:
    raise MissingDependencyError("matplotlib", "eval", "the report's plots") from error

PANEL_INCHES = 3.6


def save_figure(figure: Figure, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write ``figure`` as a PNG (Agg canvas) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path


def sts_scatter(predictions: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]) -> Figure:
    """Predicted cosine against gold score, one panel per (STS set, model).

    Args:
        predictions: ``{model: {set name: (cosine [n], gold [n])}}``; rows are sets, columns models.
    """
    models = list(predictions)
    sets = sorted({name for per_model in predictions.values() for name in per_model})
    figure = Figure(figsize=(PANEL_INCHES * len(models), PANEL_INCHES * len(sets)), layout="constrained")
    axes = figure.subplots(len(sets), len(models), squeeze=False, sharex="row", sharey="row")
    for row, name in enumerate(sets):
        for column, model in enumerate(models):
            ax = axes[row][column]
            if name not in predictions[model]:
                ax.set_axis_off()
                continue
            cosine, gold = predictions[model][name]
            ax.scatter(gold, cosine, s=4, alpha=0.35, linewidths=0)
            ax.set_title(f"{model}\n{name}", fontsize=9)
            ax.set_xlabel("gold score")
            if column == 0:
                ax.set_ylabel("cosine similarity")
    return figure


def alignment_uniformity(points: Mapping[str, tuple[float, float]]) -> Figure:
    """One point per model at (uniformity, alignment), as in Wang and Isola (2020): lower-left is better.

    Args:
        points: ``{model: (alignment, uniformity)}``.
    """
    figure = Figure(figsize=(PANEL_INCHES * 1.4, PANEL_INCHES * 1.2), layout="constrained")
    ax = figure.subplots()
    for model, (align, uniform) in points.items():
        ax.scatter([uniform], [align], s=40, label=model, alpha=0.8)
    ax.set_xlabel("uniformity (lower is better)")
    ax.set_ylabel("alignment (lower is better)")
    ax.margins(0.25)
    ax.legend(fontsize=7)  # a legend, not annotations: close models would print their names over each other
    return figure


def training_curves(logs: Mapping[str, Sequence[Mapping[str, Any]]], max_panels: int = 8) -> Figure:
    """Training loss and every dev metric against the step, from ``log.jsonl`` records, one line per run.

    Args:
        logs: ``{run: records}``, records as :func:`embedkit.fit` writes them: ``{"step", "loss", ...}`` and
            ``{"step", "eval": {metric: value}}``.
        max_panels: at most this many panels (the loss, then dev metrics in name order).
    """
    metrics = sorted({
        name
        for records in logs.values()
        for record in records
        for name, value in record.get("eval", {}).items()
        if isinstance(value, (int, float))
    })
    panels = ["loss", *metrics][:max_panels]
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(PANEL_INCHES * columns, PANEL_INCHES * 0.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        for run, records in logs.items():
            if panel == "loss":
                series = [(r["step"], r["loss"]) for r in records if "loss" in r]
            else:
                series = [(r["step"], r["eval"][panel]) for r in records if panel in r.get("eval", {})]
            if series:
                steps, values = zip(*series, strict=True)
                ax.plot(steps, values, marker="o" if panel != "loss" else None, markersize=3, label=run)
        ax.set_title("training loss" if panel == "loss" else f"dev {panel}", fontsize=9)
        ax.set_xlabel("step")
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if len(logs) > 1:
        axes[0].legend(fontsize=7)
    return figure


def dimension_curves(curves: Mapping[str, Mapping[str, Mapping[int, float]]]) -> Figure:
    """The primary metric of each evaluation against the embedding dimensions kept, one panel per evaluation and
    one line per model (Matryoshka models keep their scores at smaller sizes).

    Args:
        curves: ``{model: {evaluation: {dim: value}}}``.
    """
    entries = list(dict.fromkeys(entry for per_model in curves.values() for entry in per_model))
    columns = min(len(entries), 3)
    rows = math.ceil(len(entries) / columns)
    figure = Figure(figsize=(PANEL_INCHES * columns, PANEL_INCHES * 0.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, entry in zip(axes, entries, strict=False):
        for model, per_model in curves.items():
            if entry in per_model:
                dims = sorted(per_model[entry])
                ax.plot(dims, [per_model[entry][d] for d in dims], marker="o", markersize=3, label=model)
        ax.set_xscale("log", base=2)
        ticks = sorted({d for per_model in curves.values() for d in per_model.get(entry, {})})
        ax.set_xticks(ticks, [str(d) for d in ticks])
        ax.set_title(entry, fontsize=9)
        ax.set_xlabel("dimensions kept")
    for ax in axes[len(entries):]:
        ax.set_axis_off()
    axes[0].legend(fontsize=7)
    return figure
