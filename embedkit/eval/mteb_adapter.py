"""MTEB for embedkit encoders: an adapter satisfying mteb's ``EncoderProtocol``, and a runner.

The adapter's :class:`mteb.models.ModelMeta` names the model and its revision, under which mteb files its results
(``results/<name>/<revision>/<task>.json``):

- a model that is a hub commit's files, unchanged, has that commit as its revision (as mteb's own model registry
  records hub models), its hub name as its name and the commit's page as its ``reference``. Its files are a
  commit's when they lie in the Hugging Face cache (``.../models--org--name/snapshots/<commit>/``) or in a folder
  that ``hf download --local-dir`` filled and that records the commit of every file (``.cache/huggingface/
  download/``), none edited since; unchanged means the loaded model has the weights and configuration those files
  give;
- any other model (fine-tuned, a saved copy, the offline copy of the default model, which records no commit) has
  a fingerprint of its weights and inference configuration as its revision, so that the results of a fine-tuned
  model never land where the base model's are, nor two checkpoints of one run in the same place.

:attr:`MtebEncoder.revision_source` (``"hub"`` or ``"weights"``) says which, as do the outcomes of
:func:`run_mteb`. A run in a precision other than float32 also gets its own experiment folder.

Prompts are chosen as sentence-transformers' mteb wrapper chooses them: from the model's ``prompts`` dict, the first
of ``"<task name>-<query|document>"``, ``"<task name>"``, ``"<task type>-<query|document>"``, ``"<task type>"``
and ``"<query|document>"`` it holds (mteb's own :func:`~mteb.models.abs_encoder.get_prompt_name`, over the keys
mteb accepts: a task name must be one mteb registers), else the model's query or document prompt for mteb's
``prompt_type`` (:mod:`embedkit.encoders.prompts`), else its default prompt. A task's instructions per query reach
the encoder inside the query texts, where mteb puts them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, Unpack

import numpy as np
import torch

from embedkit.encoders import load_encoder, resolve_model_path
from embedkit.encoders.locate import looks_like_local_path
from embedkit.encoders.prompts import DOCUMENT, QUERY, resolve_prompt
from embedkit.errors import ConfigError, EmbedkitError, MissingDependencyError
from embedkit.eval.mteb_local import LocalTaskSpec, read_task_file, resolve_tasks
from embedkit.eval.scale import SCORE_SCALE
from embedkit.hub import cached_hub_file
from embedkit.types import TextEncoder

try:  # mteb is optional (the eval extra): without it, importing this module is a one-line error
    import mteb
    from mteb.models import ModelMeta
    from mteb.models.abs_encoder import AbsEncoder, get_prompt_name
    from mteb.models.model_meta import ScoringFunction
    from mteb.types import PromptType
except ImportError as error:
    raise MissingDependencyError("mteb", "eval", "MTEB evaluation") from error

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import BatchedInput, EncodeKwargs
    from sentence_transformers import SentenceTransformer
    from torch.utils.data import DataLoader

LOCAL_ORGANISATION = "local"  # mteb names are "organisation/model"; a folder has no organisation
HUB_SNAPSHOT = re.compile(r"/models--(?P<repo>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})(?:/|$)")
COMMIT = re.compile(r"[0-9a-f]{40}")
DOWNLOAD_RECORDS = Path(".cache", "huggingface", "download")  # what `hf download --local-dir` writes per file


class SentenceTransformerEncoder(TextEncoder, Protocol):
    """A :class:`~embedkit.types.TextEncoder` around a ``SentenceTransformer``, whose modules and precision name
    it in mteb's results: an :class:`~embedkit.encoders.Encoder`, or a wrapper that passes its attributes on."""

    @property
    def model(self) -> SentenceTransformer: ...

    def compute_dtype(self) -> torch.dtype: ...


def weights_fingerprint(encoder: SentenceTransformerEncoder) -> str:
    """SHA-256 (first 16 hex digits) of the inference model: its weights' fingerprint (the one index manifests
    record, :func:`embedkit.index.model_fingerprint`) and every module's configuration.

    Pooling mode, normalisation, the maximum sequence length and prompts change embeddings without changing
    weights, so they are part of it (prompts only when the model has one, so that the fingerprints of models
    without any stay what they were); training-only heads are not.
    """
    from embedkit.index import model_fingerprint

    model = encoder.model
    configs = [
        [type(module).__name__, module.get_config_dict() if hasattr(module, "get_config_dict") else {}]
        for module in model
    ]
    parts = [model_fingerprint(model), configs, model.max_seq_length]
    if _has_prompts(encoder):
        parts.append([encoder.prompts, model.default_prompt_name])
    identity = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _has_prompts(encoder: TextEncoder) -> bool:
    return any(encoder.prompts.values())


def mteb_model_name(source: str | os.PathLike[str]) -> str:
    """The mteb name of a model loaded from ``source``: a hub id as it is, a folder as ``local/<folder>``."""
    source = str(source)
    path = Path(source)
    if path.exists():
        # runs/simcse/best -> local/simcse-best: the last two parts tell checkpoints of different runs apart
        parts = path.resolve().parts[-2:]
        return f"{LOCAL_ORGANISATION}/{'-'.join(parts)}"
    return source if "/" in source else f"{LOCAL_ORGANISATION}/{source}"


@dataclass(frozen=True)
class HubCommit:
    """The hub commit whose files a model folder holds: the repository (``None`` where the folder does not say)
    and the commit hash."""

    repo: str | None
    commit: str


def hub_commit(source: str | os.PathLike[str]) -> tuple[HubCommit, Path] | None:
    """The hub commit that the model named ``source`` is loaded from, and the folder of its files; ``None`` when
    its files are not a commit's (a saved or fine-tuned model, the default model's offline copy, a hub model
    neither in the cache nor downloaded).

    A hub name stands for the snapshot the Hugging Face cache holds of it; a folder is a commit's when it is such
    a snapshot, or when ``hf download --local-dir`` recorded one commit for each of its files and none was
    modified after it was downloaded.
    """
    folder = Path(resolve_model_path(source))
    if not folder.is_dir():
        name = str(source)
        if looks_like_local_path(name):
            return None
        cached = cached_hub_file(name, "modules.json")
        if cached is None:
            return None
        folder = cached.parent
    snapshot = HUB_SNAPSHOT.search(folder.absolute().as_posix())
    if snapshot is not None:
        return HubCommit(snapshot["repo"].replace("--", "/"), snapshot["commit"]), folder
    commit = _downloaded_commit(folder)
    return (HubCommit(None, commit), folder) if commit is not None else None


def _downloaded_commit(folder: Path) -> str | None:
    """The one commit that ``hf download --local-dir`` recorded for every file of ``folder``, none modified since
    (its record is ``commit``, ``etag`` and ``timestamp`` lines, as huggingface_hub writes and checks it)."""
    records = folder / DOWNLOAD_RECORDS
    if not records.is_dir():
        return None
    files = [p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] != ".cache"]
    commits = set()
    for file in files:
        record = records / f"{file.relative_to(folder)}.metadata"
        try:
            commit, _, timestamp = record.read_text().splitlines()[:3]
            edited = file.stat().st_mtime - 1 > float(timestamp)
        except (OSError, ValueError):  # no record, or not one huggingface_hub wrote
            return None
        if edited or COMMIT.fullmatch(commit) is None:
            return None
        commits.add(commit)
    return commits.pop() if len(commits) == 1 else None


@functools.lru_cache(maxsize=8)
def _files_fingerprint(folder: Path) -> str:
    """:func:`weights_fingerprint` of the model ``folder`` holds, loaded as it is (once per process)."""
    return weights_fingerprint(load_encoder(folder, device="cpu", precision="fp32"))


def model_revision(
    encoder: SentenceTransformerEncoder, source: str | os.PathLike[str]
) -> tuple[str, HubCommit | None]:
    """``(revision, commit)``: the hub commit of ``source`` when ``encoder`` is its files unchanged, else
    ``(weights fingerprint, None)``."""
    fingerprint = weights_fingerprint(encoder)
    found = hub_commit(source)
    if found is None:
        return fingerprint, None
    commit, folder = found
    # a model trained (or re-pooled) after it was loaded is no longer the commit's model
    return (commit.commit, commit) if _files_fingerprint(folder) == fingerprint else (fingerprint, None)


def build_model_meta(encoder: SentenceTransformerEncoder, source: str | os.PathLike[str] | None = None) -> ModelMeta:
    """mteb metadata of ``encoder`` (loaded from ``source``, default: the name it records); see the module docs."""
    source = source if source is not None else encoder.name
    revision, commit = model_revision(encoder, source)
    name = commit.repo if commit is not None and commit.repo is not None else mteb_model_name(source)
    dtype = encoder.compute_dtype()
    return ModelMeta.create_empty(
        overwrites=dict(
            name=name,
            revision=revision,
            reference=f"https://huggingface.co/{name}/tree/{revision}" if commit is not None and commit.repo else None,
            n_parameters=sum(p.numel() for p in encoder.model.parameters()),
            max_tokens=encoder.max_seq_length,
            embed_dim=encoder.dim,
            similarity_fn_name=ScoringFunction.COSINE,  # every embedkit evaluation scores by cosine similarity
            framework=["Sentence Transformers", "PyTorch"],
            use_instructions=_has_prompts(encoder),
            open_weights=True,
            adapted_from=encoder.name if commit is None and encoder.name != name else None,
            experiment_kwargs=None if dtype == torch.float32 else {"precision": str(dtype).removeprefix("torch.")},
        )
    )


class MtebEncoder(AbsEncoder):
    """Any embedkit :class:`~embedkit.encoders.Encoder` as an mteb encoder (``mteb.EncoderProtocol``).

    It is mteb's kind of encoder, not a :class:`~embedkit.types.TextEncoder`: its ``encode`` takes mteb's batches
    and task metadata. :attr:`model` is the embedkit encoder inside.

    Args:
        model: an encoder, or a model name or folder to load one from.
        revision: unused (the revision is found as the module docs say); part of mteb's loader signature.
        device: where to load a model given by name.
        model_source: the name or folder the encoder was loaded from, to name it in mteb's results (default: the
            name the encoder records, which for a fine-tuned model is its base model's: its weights, which are not
            the base model's, then give it a revision of its own).
        precision: precision of a model given by name.
    """

    model: SentenceTransformerEncoder
    mteb_model_meta: ModelMeta
    task_prompts: dict[str, str] | None
    """The model's prompts that mteb keys by task name, task type or prompt type (``None``: none)."""

    def __init__(
        self,
        model: SentenceTransformerEncoder | str,
        revision: str | None = None,
        *,
        device: str | None = None,
        model_source: str | os.PathLike[str] | None = None,
        precision: str = "auto",
    ) -> None:
        if isinstance(model, str):
            model_source = model_source if model_source is not None else model
            model = load_encoder(model, device=device, precision=precision)
        self.model = model
        self.mteb_model_meta = build_model_meta(model, model_source)
        with warnings.catch_warnings():
            # keys that name no mteb task ("passage", a local task) are named prompts, not task prompts: no warning
            warnings.simplefilter("ignore")
            self.task_prompts, _ = AbsEncoder.validate_task_to_prompt_name(
                dict(model.prompts), raise_for_invalid_keys=False
            )

    @property
    def revision_source(self) -> str:
        """``"hub"`` when the revision is a hub commit, ``"weights"`` when it is the weights fingerprint."""
        return "hub" if COMMIT.fullmatch(str(self.mteb_model_meta.revision)) else "weights"

    def encode(
        self,
        inputs: DataLoader[BatchedInput],
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Unpack[EncodeKwargs],
    ) -> np.ndarray:
        """``[n, D]`` float32 embeddings of the texts of ``inputs``, each after the prompt the task and
        ``prompt_type`` call for (see the module docs)."""
        texts = [text for batch in inputs for text in batch["text"]]
        return self.model.encode(
            texts,
            batch_size=int(kwargs.get("batch_size", 32)),
            show_progress=kwargs.get("show_progress_bar"),
            prompt=self.prompt_for(task_metadata, prompt_type),
        )

    def prompt_for(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str | None:
        """The prompt of a task's texts of ``prompt_type``; ``None`` leaves the model's default prompt."""
        name = get_prompt_name(self.task_prompts, task_metadata, prompt_type)
        if self.task_prompts is not None and name is not None:
            return self.task_prompts[name]
        if prompt_type is None:
            return None
        return resolve_prompt(self.model.prompts, QUERY if prompt_type == PromptType.query else DOCUMENT)


@dataclass(frozen=True)
class MtebTaskScore:
    """One task's outcome: where its data came from, mteb's main score (x100) and every score (x100), and the
    revision the model's results are filed under, with where it comes from (``"hub"`` or ``"weights"``)."""

    task: str
    source: str
    main_score_name: str
    main_score: float
    scores: dict[str, float]
    result_file: str | None
    model_revision: str
    revision_source: str


def run_mteb(
    encoder: SentenceTransformerEncoder | MtebEncoder,
    tasks: Sequence[str],
    *,
    local_tasks: str | os.PathLike[str] | Mapping[str, LocalTaskSpec] | None = None,
    task_source: str = "auto",
    model_source: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
) -> list[MtebTaskScore]:
    """Evaluate ``encoder`` on mteb tasks.

    Args:
        encoder: an embedkit encoder, or one already wrapped.
        tasks: mteb task names, local task names or task paths (see :func:`~embedkit.eval.mteb_local.resolve_tasks`).
        local_tasks: a task TOML file, or the declarations read from one.
        task_source: ``"auto"``, ``"hub"`` or ``"local"`` (see :func:`~embedkit.eval.mteb_local.resolve_tasks`).
        model_source: the name or folder ``encoder`` came from, which names it in the results.
        output_dir: results are written there in mteb's format (``results/<model>/<revision>/<task>.json``) and
            reused when the model, its weights and the task's dataset revision are unchanged; ``None``: not kept.
        batch_size: encoding batch size.
    """
    adapter = encoder if isinstance(encoder, MtebEncoder) else MtebEncoder(encoder, model_source=model_source)
    local = read_task_file(local_tasks) if isinstance(local_tasks, (str, os.PathLike)) else local_tasks
    if not tasks:
        raise ConfigError("no mteb tasks given")
    cache = mteb.ResultCache(str(output_dir)) if output_dir is not None else None
    outcomes = []
    for origin, task in resolve_tasks(tasks, local, task_source):
        name = task.metadata.name
        cached = cache.load_task_result(name, adapter.mteb_model_meta) if cache else None
        # mteb's cache key is (model, revision, task name): a local set and the hub set of one name, or an edited
        # local file, would share it, so results of another dataset revision are recomputed, not reused
        stale = cached is not None and cached.dataset_revision != task.metadata.revision
        try:
            result = mteb.evaluate(
                adapter,
                task,
                cache=cache,
                overwrite_strategy="always" if stale else "only-missing",
                encode_kwargs={"batch_size": batch_size, "show_progress_bar": False},
                show_progress_bar=False,
                co2_tracker=False,
            )
        except OSError as error:  # the hub or a dataset download failed
            raise EmbedkitError(f"mteb task {name!r} ({origin}) failed: {str(error).splitlines()[0]}") from error
        task_result = result.task_results[0]
        # a task may score several splits and subsets (languages): report their mean, as mteb's get_score() does
        entries = [entry for split in task_result.scores.values() for entry in split]
        metrics = sorted({k for entry in entries for k, v in entry.items() if _is_number(v)})
        path = cache.get_task_result_path(name, adapter.mteb_model_meta) if cache else None
        outcomes.append(
            MtebTaskScore(
                task=name,
                source=origin,
                main_score_name=task.metadata.main_score,
                main_score=100 * float(task_result.get_score()),
                scores={k: 100 * float(np.mean([e[k] for e in entries if k in e])) for k in metrics},
                result_file=str(path) if path else None,
                model_revision=str(adapter.mteb_model_meta.revision),
                revision_source=adapter.revision_source,
            )
        )
    return outcomes


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class MtebEvaluator:
    """``evaluator(encoder) -> {"<task>/<main score>": x100, ..., "mean": ...}`` over mteb tasks.

    The primary metric is ``mean``, the mean main score. Arguments as for :func:`run_mteb`.
    """

    tasks: Sequence[str]
    local_tasks: str | os.PathLike[str] | Mapping[str, LocalTaskSpec] | None = None
    task_source: str = "auto"
    model_source: str | os.PathLike[str] | None = None
    output_dir: str | os.PathLike[str] | None = None
    batch_size: int = 64
    primary_metric: str = field(default="mean", init=False)
    higher_is_better: bool = field(default=True, init=False)
    score_scale: ClassVar[int] = SCORE_SCALE

    def __post_init__(self) -> None:
        if isinstance(self.local_tasks, (str, os.PathLike)):
            self.local_tasks = read_task_file(self.local_tasks)  # read now so that a bad file fails early

    def __call__(self, encoder: SentenceTransformerEncoder) -> dict[str, float]:
        outcomes = run_mteb(
            encoder,
            self.tasks,
            local_tasks=self.local_tasks,
            task_source=self.task_source,
            model_source=self.model_source,
            output_dir=self.output_dir,
            batch_size=self.batch_size,
        )
        metrics = {f"{o.task}/{o.main_score_name}": o.main_score for o in outcomes}
        metrics["mean"] = float(np.mean([o.main_score for o in outcomes]))
        return metrics
