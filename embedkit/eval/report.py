"""One report: every score of one or more models on a declared suite, as JSON, a Markdown table and PNG plots.

A suite is a TOML file; paths are relative to it. Each section holds named entries, a path or a table of the
evaluator's options (``path`` names the data)::

    [sts]
    stsb = "stsb/test.jsonl"                       # STSEvaluator: a scored file or a folder of them

    [retrieval]
    cranfield = { path = "cranfield", index_spec = "faiss:Flat", k = 100 }   # RetrievalEvaluator

    [preference]                                   # PreferenceEvaluator
    hh = { path = "preference_hh_rlhf/test.jsonl", mode = "similarity" }

    [geometry]                                     # GeometryEvaluator; default: the first STS file
    stsb = { path = "stsb/dev.jsonl", sentences = "wiki.txt" }

    [mteb]
    tasks = ["STSBenchmark", "Cranfield"]
    local_tasks = "mteb_tasks.toml"                # see embedkit.eval.mteb_local
    source = "auto"

``recipes/suite.toml`` is an example that runs on the sample data in ``data/quickstart``.

:func:`write_report` writes ``report.json``, ``report.md`` and ``sts_scatter.png``, ``alignment_uniformity.png``
and, for training runs (a run folder as the model, or a log given), ``training.png``. Every metric is named once,
``section/entry/metric``; ``report.json`` states the scale of its scores (see :mod:`embedkit.eval.scale`). Asked
for dimensions (``dims``), the STS and retrieval entries are also scored with the embeddings cut to each
(Matryoshka models, :func:`dimension_curve`), as metrics ``<entry>/<metric>/dim<d>`` and the plot
``dimensions.png``.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import json
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.encoders.truncation import TruncatedEncoder
from embedkit.errors import ConfigError, DataError
from embedkit.eval import EVALUATORS
from embedkit.eval.geometry import GeometryEvaluator
from embedkit.eval.retrieval import RetrievalEvaluator
from embedkit.eval.scale import SCORE_SCALE, scale_fields
from embedkit.eval.sts import STSEvaluator, sts_files
from embedkit.fsutil import atomic_write_bytes
from embedkit.types import Evaluator, TextEncoder
from embedkit.version import __version__

# section -> (the evaluator option that ``path`` stands for, the options that are paths)
SECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sts": ("path", ("path",)),
    "retrieval": ("folder", ("folder",)),
    "preference": ("path", ("path",)),
    "geometry": ("pairs", ("pairs", "sentences")),
}
MTEB_KEYS = {"tasks", "local_tasks", "source"}
RUN_LOG = "log.jsonl"
RUN_MODELS = ("best", "final")  # the models fit() leaves in a run folder, in order of preference


@dataclass(frozen=True)
class SuiteEntry:
    """One evaluation of a suite: ``section`` (sts, retrieval, ...), its ``name`` and the evaluator's options."""

    section: str
    name: str
    options: Mapping[str, Any]

    @property
    def key(self) -> str:
        return f"{self.section}/{self.name}"


@dataclass(frozen=True)
class MtebSuite:
    """The ``[mteb]`` section: task names, an optional local task file and where tasks come from."""

    tasks: tuple[str, ...]
    local_tasks: Path | None = None
    source: str = "auto"


@dataclass(frozen=True)
class Suite:
    """A parsed suite file."""

    path: Path
    entries: tuple[SuiteEntry, ...]
    mteb: MtebSuite | None = None


def _options_of(section: str) -> set[str]:
    """The options the evaluator registered as ``section`` takes."""
    parameters = inspect.signature(EVALUATORS.get(section)).parameters
    return {name for name in parameters if name != "primary_metric"}


def read_suite(path: str | os.PathLike[str]) -> Suite:
    """Parse and check a suite: known sections and options, and every file it names present.

    Raises:
        DataError: the suite or a file it names does not exist (one line: the path and the entry naming it).
        ConfigError: malformed TOML, an unknown section or option, an entry without a path.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such suite file", str(path))
    try:
        tables = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None
    unknown = set(tables) - set(SECTIONS) - {"mteb"}
    if unknown:
        valid = ", ".join([*SECTIONS, "mteb"])
        raise ConfigError(f"{path}: unknown sections {', '.join(sorted(unknown))}; valid: {valid}")
    base = path.parent
    entries = []
    for section, (main, path_options) in SECTIONS.items():
        for name, value in tables.get(section, {}).items():
            where = f"[{section}] {name} in {path}"
            options = dict(value) if isinstance(value, dict) else {"path": value}
            if "path" not in options:
                raise ConfigError(f"{where}: needs a path")
            options[main] = options.pop("path")
            valid = _options_of(section)
            extra = set(options) - valid
            if extra:
                raise ConfigError(f"{where}: unknown options {', '.join(sorted(extra))}; valid: path, "
                                  f"{', '.join(sorted(valid - {main}))}")
            for option in path_options:
                if option in options:
                    options[option] = _existing(base / str(options[option]), where)
            entries.append(SuiteEntry(section, name, options))
    mteb = None
    if "mteb" in tables:
        table = tables["mteb"]
        extra = set(table) - MTEB_KEYS
        if extra:
            valid = ", ".join(sorted(MTEB_KEYS))
            raise ConfigError(f"[mteb] in {path}: unknown keys {', '.join(sorted(extra))}; valid: {valid}")
        tasks = table.get("tasks")
        if not tasks or not isinstance(tasks, list):
            raise ConfigError(f"[mteb] in {path}: tasks must be a non-empty list of task names")
        local = table.get("local_tasks")
        mteb = MtebSuite(
            # a task named by its files is relative to the suite, like every other path in it
            tasks=tuple(str(base / t) if (base / str(t)).exists() else str(t) for t in tasks),
            local_tasks=_existing(base / str(local), f"[mteb] local_tasks in {path}") if local else None,
            source=str(table.get("source", "auto")),
        )
    if not entries and mteb is None:
        raise ConfigError(f"{path}: the suite declares no evaluation")
    return Suite(path=path, entries=tuple(entries), mteb=mteb)


def _existing(path: Path, where: str) -> Path:
    if not path.exists():
        raise DataError(f"no such file or folder (named by {where})", str(path))
    return path


def build_evaluators(suite: Suite, batch_size: int = 64) -> dict[str, Any]:
    """``{"section/name": evaluator}`` for the suite; data is read (and checked) now.

    Without a ``[geometry]`` section, geometry is measured on the first STS file, as SimCSE does on STS-B, so
    every report has its alignment-uniformity plot when it has STS data.
    """
    evaluators = {}
    for entry in suite.entries:
        options = {"batch_size": batch_size, **entry.options}
        evaluators[entry.key] = EVALUATORS.get(entry.section)(**options)
    sts = [e for e in suite.entries if e.section == "sts"]
    if sts and not any(e.section == "geometry" for e in suite.entries):
        first_file = sts_files(sts[0].options["path"])[0]
        evaluators[f"geometry/{sts[0].name}"] = GeometryEvaluator(first_file, batch_size=batch_size)
    if suite.mteb is not None:
        try:  # mteb is optional: imported only when asked for
            evaluators["mteb"] = EVALUATORS.get("mteb")(
                suite.mteb.tasks, local_tasks=suite.mteb.local_tasks, task_source=suite.mteb.source,
                batch_size=batch_size,
            )
        except ImportError:
            message = "the suite's [mteb] section needs the mteb package: pip install 'embedkit[eval]'"
            raise ConfigError(message) from None
    return evaluators


class CachedEncoder:
    """An encoder that embeds each distinct text once per prompt: evaluators sharing data (STS, geometry on the
    same file, the scatter plot) do not encode it again. Every other attribute is the wrapped encoder's."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self._vectors: dict[tuple[str | None, str], np.ndarray] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        normalize: bool = False,
        *,
        prompt: str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if (prompt, t) not in self._vectors))
        if missing:
            # the prompt goes on only when given, so an encoder that takes none can be cached for prompt-free use
            prompted = {} if prompt is None else {"prompt": prompt}
            vectors = self.encoder.encode(missing, batch_size=batch_size, **prompted, **kwargs)
            self._vectors.update(zip(((prompt, t) for t in missing), vectors, strict=True))
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        vectors = np.stack([self._vectors[prompt, t] for t in texts])
        if normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


def dimension_curve(evaluator: Evaluator, encoder: TextEncoder, dims: Sequence[int]) -> dict[int, dict[str, float]]:
    """``{dim: metrics}``: ``evaluator`` on ``encoder``'s embeddings cut to their first ``dim`` dimensions, for each
    of ``dims`` (see :class:`~embedkit.encoders.truncation.TruncatedEncoder`). Each distinct text is embedded once,
    at the encoder's own size.

    Raises:
        ConfigError: a dimension that is not a positive integer no larger than the encoder's embeddings.
    """
    cached = encoder if isinstance(encoder, CachedEncoder) else CachedEncoder(encoder)
    views = [TruncatedEncoder(cached, dim) for dim in dims]  # every dimension checked before anything is embedded
    return {view.dim: evaluator(view) for view in views}


CURVE_EVALUATORS = (STSEvaluator, RetrievalEvaluator)
"""The evaluators a report scores at each of its ``dims``."""


@dataclass
class ModelReport:
    """The results of one model: every metric (``section/name/metric``; counts stay integers) and what the plots
    need.

    ``curves`` holds, for each STS and retrieval entry scored at several dimensions, ``{dim: primary metric}``.
    """

    label: str
    model: str
    log: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    sts: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    geometry: tuple[float, float] | None = None
    curves: dict[str, dict[int, float]] = field(default_factory=dict)


def sts_predictions(evaluator: STSEvaluator, encoder: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{set name: (cosine [n], gold [n])}`` of an STS evaluator's pairs."""
    out = {}
    for name, examples in evaluator.sets.items():
        first = encoder.encode([e.anchor for e in examples], batch_size=evaluator.batch_size, normalize=True)
        second = encoder.encode([e.positive for e in examples], batch_size=evaluator.batch_size, normalize=True)
        out[name] = ((first * second).sum(axis=1), np.array([e.score for e in examples], dtype=np.float64))
    return out


def evaluate_model(encoder: Any, evaluators: Mapping[str, Any], label: str, model: str = "",
                   log: Path | None = None, dims: Sequence[int] = ()) -> ModelReport:
    """Run every evaluator on ``encoder`` (each distinct text embedded once); the STS and retrieval evaluators
    also at each of ``dims`` (:func:`dimension_curve`)."""
    cached = CachedEncoder(encoder)
    report = ModelReport(label=label, model=model or label, log=log)
    for key, evaluator in evaluators.items():
        metrics = evaluator(cached)
        report.metrics.update({f"{key}/{name}": _number(value) for name, value in metrics.items()})
        if dims and isinstance(evaluator, CURVE_EVALUATORS):
            curve = dimension_curve(evaluator, cached, dims)
            for dim, values in curve.items():
                report.metrics.update({f"{key}/{name}/dim{dim}": _number(value) for name, value in values.items()})
            report.curves[key] = {dim: float(values[evaluator.primary_metric]) for dim, values in curve.items()}
        if isinstance(evaluator, STSEvaluator):
            entry = key.split("/", 1)[1]
            for name, pair in sts_predictions(evaluator, cached).items():
                report.sts[entry if len(evaluator.sets) == 1 else f"{entry}/{name}"] = pair
        if isinstance(evaluator, GeometryEvaluator) and report.geometry is None:
            report.geometry = (metrics["alignment"], metrics["uniformity"])
    return report


def _number(value: float) -> float:
    """A metric as JSON holds it: a count (an integer) stays one, a score (numpy's too) becomes a float."""
    return value if isinstance(value, int) else float(value)


def resolve_model(model: str, log: str | os.PathLike[str] | None = None) -> tuple[str, Path | None]:
    """The model to load for ``model`` and its training log (an explicit ``log`` wins).

    A run folder (with ``log.jsonl``) stands for its ``best/`` model, else ``final/``; a run's ``best/`` or
    ``final/`` named directly brings the run's log too.
    """
    path = Path(model)
    if log is not None and not Path(log).is_file():
        raise DataError("no such training log", str(log))
    if path.is_dir() and (path / RUN_LOG).is_file() and not (path / "modules.json").is_file():
        for name in RUN_MODELS:
            if (path / name).is_dir():
                return str(path / name), Path(log) if log else path / RUN_LOG
        raise DataError(f"a training run folder without a {' or '.join(RUN_MODELS)}/ model", str(path))
    if log is None and path.name in RUN_MODELS and (path.parent / RUN_LOG).is_file():
        log = path.parent / RUN_LOG
    return model, Path(log) if log else None


def model_labels(models: Sequence[str]) -> list[str]:
    """Short column labels: a hub name as it is, a folder as its last two path parts (unless that is ambiguous)."""
    labels = [str(Path(*Path(m).parts[-2:])) if Path(m).exists() else m for m in models]
    return labels if len(set(labels)) == len(labels) else list(models)


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` written by :func:`embedkit.fit`."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"not JSON: {error.msg}", str(path), number) from None
        if not isinstance(record, dict) or "step" not in record:
            raise DataError("not a training log record (no step)", str(path), number)
        records.append(record)
    return records


def markdown_table(reports: Sequence[ModelReport]) -> str:
    """Metrics as rows, models as columns; a metric a model lacks is blank, a count is printed as an integer."""
    metrics = list(dict.fromkeys(name for report in reports for name in report.metrics))
    lines = [
        "| metric | " + " | ".join(r.label for r in reports) + " |",
        "| --- | " + " | ".join("---:" for _ in reports) + " |",
    ]
    for name in metrics:
        cells = [_cell(r.metrics[name]) if name in r.metrics else "" for r in reports]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.2f}"


def scale_note(unscaled: Sequence[str]) -> str:
    """The report's sentence on the scale of its numbers."""
    names = sorted({name.rpartition("/")[2] for name in unscaled})
    own = f"; in their own units: {', '.join(names)}" if names else ""
    return f"Scores x{SCORE_SCALE} (mteb and sentence-transformers give them in [0, 1]){own}.\n"


def write_report(
    reports: Sequence[ModelReport], out_dir: str | os.PathLike[str], suite: Path | None = None
) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and the plots to ``out_dir``; return the JSON document."""
    from embedkit.eval import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}
    if any(r.sts for r in reports):
        figures["sts_scatter.png"] = plots.sts_scatter({r.label: r.sts for r in reports if r.sts})
    points = {r.label: r.geometry for r in reports if r.geometry is not None}
    if points:
        figures["alignment_uniformity.png"] = plots.alignment_uniformity(points)
    logs = {r.label: read_log(r.log) for r in reports if r.log is not None}
    if logs:
        figures["training.png"] = plots.training_curves(logs)
    if any(r.curves for r in reports):
        figures["dimensions.png"] = plots.dimension_curves({r.label: r.curves for r in reports if r.curves})
    for name, figure in figures.items():
        plots.save_figure(figure, out / name)

    document = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "embedkit_version": __version__,
        "suite": str(suite) if suite else None,
        **scale_fields(name for r in reports for name in r.metrics),
        "models": [{"label": r.label, "model": r.model, "log": str(r.log) if r.log else None, "metrics": r.metrics}
                   for r in reports],
        "plots": list(figures),
    }
    atomic_write_bytes(out / "report.json", (json.dumps(document, indent=2) + "\n").encode())
    markdown = [f"# embedkit report\n\nSuite: `{suite}`\n" if suite else "# embedkit report\n",
                scale_note(document["unscaled"]), markdown_table(reports)]
    markdown += [f"\n![{name.removesuffix('.png')}]({name})\n" for name in figures]
    atomic_write_bytes(out / "report.md", "\n".join(markdown).encode())
    return document


def run_report(
    models: Sequence[str],
    suite_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    log: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    load: Callable[[str], Any] | None = None,
    dims: Sequence[int] = (),
) -> dict[str, Any]:
    """Evaluate each model (name, folder or run folder) on the suite and write the report.

    Args:
        models: the models, side by side in the order given; the first may have a training ``log``.
        suite_path: the suite TOML.
        out_dir: where report.json, report.md and the plots go (mteb's result files in ``out_dir/mteb``).
        log: a ``log.jsonl`` for the first model (a run folder brings its own).
        batch_size: encoding batch size of every evaluator.
        load: ``load(model) -> encoder`` (default :func:`embedkit.load_encoder`).
        dims: also score the STS and retrieval entries with the embeddings cut to each of these dimensions
            (Matryoshka models), and plot the curves.
    """
    from embedkit.encoders import load_encoder

    load = load or load_encoder
    suite = read_suite(suite_path)
    resolved = [resolve_model(m, log if i == 0 else None) for i, m in enumerate(models)]
    evaluators = build_evaluators(suite, batch_size=batch_size)
    reports = []
    for label, (model, model_log) in zip(model_labels(models), resolved, strict=True):
        if "mteb" in evaluators:
            # mteb's results are named by where the model came from, so compared models never share a folder
            evaluators["mteb"] = dataclasses.replace(
                evaluators["mteb"], model_source=model, output_dir=Path(out_dir) / "mteb"
            )
        reports.append(evaluate_model(load(model), evaluators, label=label, model=model, log=model_log, dims=dims))
    return write_report(reports, out_dir, suite.path)
