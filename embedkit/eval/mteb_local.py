"""MTEB tasks built from local files, so that mteb's own task classes and scorers run offline.

Four kinds, each a subclass of mteb's abstract task whose ``load_data`` reads files instead of the hub (mteb's
main score in brackets):

- ``sts``: one scored file, ``sentence1``, ``sentence2``, ``score`` (cosine_spearman);
- ``retrieval``: a BEIR folder, ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv`` (ndcg_at_10);
- ``classification``: ``text`` and ``label`` columns, either a folder with ``train.*`` and ``<split>.*`` files,
  or one file scored by k-fold cross-validation (accuracy);
- ``clustering``: one file with ``text`` and ``label`` columns (v_measure).

Tasks are declared in a small TOML file, paths relative to it::

    [tasks.STSBenchmark]
    type = "sts"
    path = "stsb/test.jsonl"

    [tasks.Cranfield]
    type = "retrieval"
    path = "cranfield"

or named by a path alone (``--tasks path/to/cranfield``), the type then read from the files. Each task's
dataset revision is a hash of its files, so a result records exactly which data it scored.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from embedkit.data import Kind, read_examples, read_rows
from embedkit.data.beir import read_beir
from embedkit.errors import ConfigError, DataError, UnknownNameError
from embedkit.eval.sts import check_sts_set
from embedkit.hub import hub_reachable

if TYPE_CHECKING:  # mteb and datasets are optional (the eval extra): imported where a task is built
    from datasets import DatasetDict
    from mteb.abstasks import AbsTask

TASK_TYPES = ("sts", "retrieval", "classification", "clustering")
COMMON_KEYS = {"type", "path", "split", "languages", "description", "columns"}
# mteb task attributes that a declaration may set, per type (anything else is a typo)
TYPE_KEYS = {
    "sts": {"min_score", "max_score"},
    "retrieval": {"k_values"},
    "classification": {"samples_per_label", "n_experiments", "n_splits"},
    "clustering": {"n_clusters", "max_documents_per_cluster"},
}
DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".tsv", ".parquet")


class TooFewLabelsError(DataError):
    """A classification or clustering file whose rows carry fewer than two distinct labels."""


@dataclass(frozen=True)
class LocalTaskSpec:
    """One local task: its mteb name, type, files and the mteb task attributes it overrides."""

    name: str
    type: str
    path: Path
    split: str = "test"
    languages: tuple[str, ...] = ("eng-Latn",)
    description: str = ""
    columns: Mapping[str, str] | None = None
    options: Mapping[str, object] = field(default_factory=dict)  # TOML values, set as mteb task attributes

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise ConfigError(f"task {self.name!r}: unknown type {self.type!r}; valid: {', '.join(TASK_TYPES)}")
        unknown = set(self.options) - TYPE_KEYS[self.type]
        if unknown:
            valid = sorted(COMMON_KEYS | TYPE_KEYS[self.type])
            raise ConfigError(
                f"task {self.name!r}: unknown keys {', '.join(sorted(unknown))}; "
                f"valid for {self.type}: {', '.join(valid)}"
            )
        if not self.path.exists():
            raise DataError(f"task {self.name!r}: no such file or folder", str(self.path))


def read_task_file(path: str | os.PathLike[str]) -> dict[str, LocalTaskSpec]:
    """The ``[tasks.NAME]`` declarations of a TOML file, by name; relative paths are relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such task file", str(path))
    try:
        tables = tomllib.loads(path.read_text()).get("tasks", {})
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{path}: declares no [tasks.NAME] table")
    return {name: spec_from_table(name, table, path.parent, str(path)) for name, table in tables.items()}


def spec_from_table(name: str, table: object, base: Path, where: str) -> LocalTaskSpec:
    """A :class:`LocalTaskSpec` from one TOML table; ``base`` resolves a relative ``path``."""
    if not isinstance(table, dict) or "type" not in table or "path" not in table:
        raise ConfigError(f"{where}: task {name!r} needs at least type and path")
    options = {k: v for k, v in table.items() if k not in COMMON_KEYS}
    return LocalTaskSpec(
        name=name,
        type=str(table["type"]),
        path=(base / str(table["path"])).resolve(),
        split=str(table.get("split", "test")),
        languages=tuple(table.get("languages", ("eng-Latn",))),
        description=str(table.get("description", "")),
        columns=table.get("columns"),
        options=options,
    )


def spec_from_path(path: str | os.PathLike[str], split: str = "test") -> LocalTaskSpec:
    """A task named after a file or folder, its type read from the files.

    A folder with ``corpus.jsonl`` is retrieval; a folder with ``train.*`` is classification; a file is STS when
    its first row has ``sentence1``, ``sentence2`` and ``score``, and classification when it has ``text`` and
    ``label`` (declare clustering in a task file: its files look like classification's).
    """
    path = Path(path).resolve()
    name = path.name.split(".")[0]
    if path.is_dir():
        if (path / "corpus.jsonl").is_file():
            return LocalTaskSpec(name, "retrieval", path, split=split)
        if _split_file(path, "train") is not None:
            return LocalTaskSpec(name, "classification", path, split=split)
        raise DataError("cannot tell the task type: neither a BEIR folder nor train/test files", str(path))
    first = next(iter(read_rows(path)), None)
    columns = set(first[1]) if first else set()
    if {"sentence1", "sentence2", "score"} <= columns:
        return LocalTaskSpec(name, "sts", path, split=split)
    if {"text", "label"} <= columns:
        return LocalTaskSpec(name, "classification", path, split=split)
    raise DataError("cannot tell the task type: expected sentence1/sentence2/score or text/label columns", str(path))


def _split_file(folder: Path, split: str) -> Path | None:
    for suffix in DATA_SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    return None


def content_hash(path: Path) -> str:
    """SHA-256 (first 16 hex digits) of a file, or of a folder's files in name order (names included)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


# -- reading the data into the shapes mteb's tasks expect ------------------------------------------------------
def _labelled(
    path: Path, columns: Mapping[str, str] | None, min_labels: int = 2
) -> tuple[list[str], list[int], list[str]]:
    """Texts, integer labels and the label names (sorted) of a ``text``/``label`` file."""
    rename = dict(columns or {})  # file column -> text or label, as read_examples() takes columns
    texts, raw = [], []
    for line, row in read_rows(path):
        row = {rename.get(k, k): v for k, v in row.items()}
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str) or not text.strip():
            raise DataError("column 'text' is missing or empty", str(path), line)
        if label is None or isinstance(label, (list, dict)):
            raise DataError("column 'label' is missing or not a single value", str(path), line)
        texts.append(text)
        raw.append(str(label))
    if not texts:
        raise DataError("no rows", str(path))
    names = sorted(set(raw))
    if len(names) < min_labels:
        raise TooFewLabelsError(f"needs at least {min_labels} distinct labels, found only {names[0]!r}", str(path))
    ids = {name: i for i, name in enumerate(names)}
    return texts, [ids[label] for label in raw], names


def _load_sts(spec: LocalTaskSpec) -> DatasetDict:
    from datasets import Dataset, DatasetDict

    if spec.path.is_dir():
        raise DataError("an STS task reads one scored file, not a folder", str(spec.path))
    examples = read_examples(spec.path, kind=Kind.SCORED, columns=spec.columns)
    check_sts_set(examples, str(spec.path))
    rows = {
        "sentence1": [e.anchor for e in examples],
        "sentence2": [e.positive for e in examples],
        "score": [float(e.score) for e in examples],
    }
    return DatasetDict({spec.split: Dataset.from_dict(rows)})


def _load_retrieval(spec: LocalTaskSpec) -> dict[str, dict[str, dict[str, object]]]:
    """mteb's retrieval layout: ``{subset: {split: {"corpus", "queries", "relevant_docs", "top_ranked"}}}``."""
    from datasets import Dataset

    data = read_beir(spec.path, spec.split)
    split = {
        # mteb embeds a document as its title and text joined, as embedkit's RetrievalEvaluator does
        "corpus": Dataset.from_dict({"id": data.doc_ids, "title": data.titles, "text": data.texts}),
        "queries": Dataset.from_dict({"id": data.query_ids, "text": data.queries}),
        "relevant_docs": data.qrels,
        "top_ranked": None,
    }
    return {"default": {spec.split: split}}


def _load_classification(spec: LocalTaskSpec) -> DatasetDict:
    from datasets import Dataset, DatasetDict

    if spec.path.is_dir():
        files = {"train": _split_file(spec.path, "train"), spec.split: _split_file(spec.path, spec.split)}
        missing = [name for name, file in files.items() if file is None]
        if missing:
            raise DataError(f"no {' or '.join(missing)} file ({', '.join(DATA_SUFFIXES)})", str(spec.path))
        texts, labels, names = _labelled(files["train"], spec.columns)
        ids = {name: i for i, name in enumerate(names)}
        # a test split may hold one class only; the classifier is trained on the train split
        test_texts, test_labels, test_names = _labelled(files[spec.split], spec.columns, min_labels=1)
        unseen = sorted(set(test_names) - set(names))
        if unseen:
            raise DataError(f"labels not in the train file: {', '.join(unseen)}", str(files[spec.split]))
        return DatasetDict({
            "train": Dataset.from_dict({"text": texts, "label": labels}),
            spec.split: Dataset.from_dict({"text": test_texts, "label": [ids[test_names[i]] for i in test_labels]}),
        })
    texts, labels, _ = _labelled(spec.path, spec.columns)
    return DatasetDict({spec.split: Dataset.from_dict({"text": texts, "label": labels})})


def _load_clustering(spec: LocalTaskSpec) -> DatasetDict:
    from datasets import Dataset, DatasetDict

    texts, labels, _ = _labelled(spec.path, spec.columns)
    return DatasetDict({spec.split: Dataset.from_dict({"sentences": texts, "labels": labels})})


# -- the mteb task classes -------------------------------------------------------------------------------------
def build_task(spec: LocalTaskSpec) -> AbsTask:
    """An mteb task instance for ``spec``: a subclass of mteb's abstract task of that type reading local files."""
    from mteb import TaskMetadata
    from mteb.abstasks import AbsTaskClassification, AbsTaskClustering, AbsTaskRetrieval, AbsTaskSTS

    base, mteb_type, main_score, loader = {
        "sts": (AbsTaskSTS, "STS", "cosine_spearman", _load_sts),
        "retrieval": (AbsTaskRetrieval, "Retrieval", "ndcg_at_10", _load_retrieval),
        "classification": (AbsTaskClassification, "Classification", "accuracy", _load_classification),
        "clustering": (AbsTaskClustering, "Clustering", "v_measure", _load_clustering),
    }[spec.type]
    try:
        metadata = TaskMetadata(
            name=spec.name,
            description=spec.description or f"Local {spec.type} task read from {spec.path}.",
            dataset={"path": str(spec.path), "revision": content_hash(spec.path)},
            type=mteb_type,
            category="t2t",
            modalities=["text"],
            eval_splits=[spec.split],
            eval_langs=list(spec.languages),
            main_score=main_score,
        )
    except ValueError as error:  # pydantic's ValidationError: a bad language code, ...
        raise ConfigError(f"task {spec.name!r}: {str(error).splitlines()[-1].strip()}") from None

    def load_data(self: AbsTask, num_proc: int | None = None, **kwargs: object) -> None:
        if not self.data_loaded:
            self.dataset = loader(spec)
            self.data_loaded = True

    attributes: dict[str, object] = {"metadata": metadata, "load_data": load_data, **spec.options}
    if spec.type == "classification" and not spec.path.is_dir():
        attributes.update(is_cross_validation=True, train_split=spec.split)
    if spec.type == "clustering":
        attributes["max_fraction_of_documents_to_embed"] = None  # local sets are small: embed every document
    # mteb restores a task's metadata from its class after a run, so the metadata must live on a class
    task_class = type(f"Local{base.__name__.removeprefix('AbsTask')}Task", (base,), attributes)
    return task_class()


# -- hub or local ---------------------------------------------------------------------------------------------
SOURCES = ("auto", "hub", "local")
ANY_MTEB_TASK = "<any name mteb.get_task() knows>"


def resolve_tasks(
    names: Iterable[str],
    local: Mapping[str, LocalTaskSpec] | None = None,
    source: str = "auto",
) -> list[tuple[str, AbsTask]]:
    """``[(source, mteb task)]`` for task names, paths or local declarations.

    Args:
        names: mteb task names (``"STSBenchmark"``), names declared in ``local``, or paths to task files/folders.
        local: declared local tasks by name (see :func:`read_task_file`).
        source: ``"hub"`` runs mteb's registered tasks (their data comes from the hub); ``"local"`` runs the
            declared tasks; ``"auto"`` runs a task's local declaration when there is one, without asking the hub
            anything (offline first), and a registered task from the hub otherwise, when the hub answers.

    Raises:
        DataError: a name shaped like a path (``data/sts.jsonl``, ``org/name``) where no such file or folder is.
        UnknownNameError: a name that is neither an mteb task, a declared task nor an existing path.
        ConfigError: a hub task when the hub cannot be reached and no local task of that name is declared.
    """
    import mteb

    if source not in SOURCES:
        raise ConfigError(f"unknown task source {source!r}; valid: {', '.join(SOURCES)}")
    local = dict(local or {})
    reachable: list[bool] = []  # asked once, and only when a task can come from the hub alone

    def online() -> bool:
        if not reachable:
            reachable.append(hub_reachable())
        return reachable[0]

    tasks = []
    for name in names:
        if name not in local and Path(name).exists():
            tasks.append(("local", build_task(spec_from_path(name))))
        elif name in local and source != "hub":
            tasks.append(("local", build_task(local[name])))
        elif _looks_like_path(name):
            # mteb's task names hold no slash and no file suffix: this is a file or folder that is not there
            raise DataError("no such file or folder (nor an mteb task of that name)", name)
        elif (registered := None if source == "local" else _registered_task(mteb, name)) is None:
            valid = {"hub": [ANY_MTEB_TASK], "local": list(local)}.get(source, [*local, ANY_MTEB_TASK])
            raise UnknownNameError(f"{'local ' if source == 'local' else ''}mteb task", name, valid)
        elif source == "hub" or online():
            tasks.append(("hub", registered))
        else:
            raise ConfigError(
                f"mteb task {name!r} needs the Hugging Face hub, which cannot be reached; declare a local task "
                f"of that name ([tasks.{name}] in a task file) to run it from files"
            )
    return tasks


def _looks_like_path(name: str) -> bool:
    return "/" in name or os.sep in name or name.endswith((*DATA_SUFFIXES, ".toml"))


def _registered_task(mteb_module: ModuleType, name: str) -> AbsTask | None:
    try:
        return mteb_module.get_task(name)
    except KeyError:
        return None
