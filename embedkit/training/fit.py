"""``fit()``: a plain PyTorch training loop for contrastive objectives.

AdamW with linear warmup and decay, gradient clipping, autocast in the encoder's precision, evaluation on a
dev set every N steps with the best model kept (as SimCSE does), periodic checkpoints and exact resume: an
interrupted run restarted with the same settings ends with the same weights as one that never stopped.

A run never hands back a model worse than its start on the dev set: the start model (step 0) is always a
candidate for ``best/``, and after training the weights between the start and the fine-tuned model can be
tried too (``interpolation``: WiSE-FT, Wortsman et al., 2022, "Robust fine-tuning of zero-shot models"), the
mixing weight chosen on the dev set. The fine-tuned end is the best trained step on the dev set, not the last
one: on small data the last steps overfit, and mixing an overfitted model back towards the start recovers less
than mixing the best one (Cranfield's dev queries, two seeds: the 0.75 mix scored 45.95 and 44.46 nDCG@10 from the
best step, 43.29 and 42.89 from the last). Inputs may be truncated shorter in training than at inference
(``max_seq_length``); saved models keep the encoder's own inference length.

Texts are trained after prompts (:func:`column_prompts`): the anchor's and the positive's prompts become the model's
query and document prompts before the first step, so that evaluation, mining and the saved model embed queries and
documents the way training did.

Layout of ``output_dir``::

    log.jsonl          one JSON object per logged step or evaluation
    checkpoint/        the latest checkpoint: encoder.safetensors, trainer_state.pt, complete.json (its step)
    checkpoint-<N>/    the checkpoint of step N, only while the next one takes its place: a run killed then
                       resumes from the newest complete one
    start.safetensors  the start weights, kept for interpolation (only when ``interpolation`` is set)
    best/              the best model by the evaluator's primary metric (sentence-transformers folder + card)
    final/             the model at the end of training (sentence-transformers folder + card)
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from safetensors.torch import save as safetensors_bytes
from torch import nn

from embedkit import distributed
from embedkit.allocator import keep_freed_memory
from embedkit.data import ColumnPrompts, Table, as_examples, collate
from embedkit.encoders.batching import embed_batch
from embedkit.encoders.card import ModelCard, write_model_card
from embedkit.encoders.prompts import DOCUMENT, QUERY, resolve_prompt
from embedkit.encoders.sentence_transformer import Encoder
from embedkit.errors import ConfigError, DataError
from embedkit.eval.scale import ScaledScores, scale_fields
from embedkit.fsutil import atomic_directory, atomic_write_bytes, fsync_directory, fsync_file, fsync_tree
from embedkit.losses.objective import Objective
from embedkit.precision import autocast
from embedkit.progress import progress_bar, quiet_library_bars, stage
from embedkit.training.gradcache import grad_cache_backward
from embedkit.training.negatives import NegativeMiner, load_mined, mining_summary, save_mined
from embedkit.types import Evaluator, Example, Kind, TextBatch

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, dict[str, float]], None]

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "trainer_state.pt"
WEIGHTS_FILE = "encoder.safetensors"
LOSS_STATE_FILE = "loss.safetensors"
COMPLETE_FILE = "complete.json"
START_FILE = "start.safetensors"
# Folders a save goes through (see _publish_checkpoint): a hidden staging copy, the previous checkpoint stepped
# aside as checkpoint-<step>, and folders being deleted. ".checkpoint.old-*" is where runs made before
# complete.json existed left the previous checkpoint while swapping in the next one.
_STAGING_PREFIX = f".{CHECKPOINT_DIR}.tmp-"
_DISCARDED_PREFIX = f".{CHECKPOINT_DIR}.discarded-"
_LEGACY_ASIDE_PATTERN = f".{CHECKPOINT_DIR}.old-*"


@dataclass(frozen=True)
class FitSettings:
    """Optimisation, evaluation and checkpoint settings: the ``[train]`` section of a recipe.

    ``max_steps`` overrides ``epochs``; ``warmup_ratio`` is the share of steps with a linear warmup (10% by
    default: without it the first full-size updates of a pretrained encoder cost it quality on small data);
    ``max_grad_norm`` clips the global gradient norm (``None``: no clipping); ``eval_steps`` and
    ``save_steps`` count optimisation steps; ``mini_batch_size`` turns on gradient caching
    (:mod:`embedkit.training.gradcache`): the loss sees ``batch_size`` rows, the encoder at most that many texts at
    once. ``max_seq_length`` truncates inputs in training only (``None``: the encoder's own length); evaluation and
    saved models use the encoder's inference length. ``interpolation`` lists WiSE-FT mixing weights ``a`` in
    ``(0, 1)`` tried after training, each the model ``(1 - a) * start + a * tuned``, where ``tuned`` is the best
    trained step on the dev set (the final model when no step beat the start); the best of every evaluated model,
    the start among them, becomes ``best/``.
    """

    output_dir: str | Path = "runs/run"
    batch_size: int = 64
    lr: float = 3e-5
    epochs: int = 1
    max_steps: int | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 42
    save_steps: int = 250
    log_steps: int = 10
    eval_steps: int = 125
    mini_batch_size: int | None = None
    max_seq_length: int | None = None
    interpolation: tuple[float, ...] = ()
    resume: bool = True
    show_progress: bool = True


@dataclass
class FitResult:
    """What a training run produced.

    ``steps`` is the run's length; ``start_step`` the step this call resumed from (``steps`` when the run had
    already finished and nothing was trained). The best model is the one at ``best_step``, or, when
    ``best_interpolation`` is set, the interpolation with that weight between the start and the model at
    ``best_step``.
    """

    steps: int
    output_dir: Path
    start_step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    best_interpolation: float | None = None
    metric: str | None = None
    first_eval: dict[str, float] | None = None
    last_eval: dict[str, float] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warmup from 0 to 1, then linear decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


class _Run:
    """The mutable state of one ``fit()`` call; split out so that checkpointing has one home."""

    def __init__(self, encoder: Encoder, loss: nn.Module, settings: FitSettings, total_steps: int) -> None:
        self.encoder = encoder
        self.loss = loss
        self.settings = settings
        self.output_dir = Path(settings.output_dir)
        params = [p for p in [*encoder.parameters(), *loss.parameters()] if p.requires_grad]
        # torch's fused AdamW (one kernel over all parameters; transformers' Trainer default) takes a sixth of the
        # time of its per-parameter loop on the CPU, a tenth of a second a step for a 22M-parameter model
        self.optimizer = torch.optim.AdamW(
            params, lr=settings.lr, weight_decay=settings.weight_decay, fused=_fusable(params)
        )
        warmup = int(settings.warmup_ratio * total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(warmup, total_steps))
        dtype = encoder.compute_dtype()
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        self.step = 0
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.best_interpolation: float | None = None

    # -- checkpoints -------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        state = {
            "step": self.step,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "best_interpolation": self.best_interpolation,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            # One RNG state per rank: each rank draws its own dropout masks.
            "torch_rng": distributed.gather_objects(torch.get_rng_state()),
            "cuda_rng": distributed.gather_objects(
                torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.zeros(0, dtype=torch.uint8)
            ),
        }
        if distributed.is_main_process():
            _publish_checkpoint(self.output_dir, self.step, lambda folder: self._write_checkpoint(folder, state))
        distributed.barrier()

    def _write_checkpoint(self, folder: Path, state: dict[str, Any]) -> None:
        """The files of a checkpoint, written into ``folder``."""
        save_model(self.encoder, str(folder / WEIGHTS_FILE))
        loss_state = _trainable_state(self.loss)
        if loss_state:
            save_file(loss_state, str(folder / LOSS_STATE_FILE))
        buffer = io.BytesIO()
        torch.save(state, buffer)
        (folder / STATE_FILE).write_bytes(buffer.getvalue())

    def load_checkpoint(self) -> bool:
        """Restore the newest complete checkpoint of the run folder; ``False`` when it holds none.

        What an interrupted save left (an older checkpoint, an unfinished copy) is deleted, once every process
        has found the newest checkpoint.
        """
        folder = latest_checkpoint(self.output_dir)
        distributed.barrier()
        if folder is None:
            return False
        if distributed.is_main_process():
            _discard_checkpoints(self.output_dir, keep=folder)
        load_model(self.encoder, str(folder / WEIGHTS_FILE))
        if (folder / LOSS_STATE_FILE).is_file():
            self.loss.load_state_dict(load_file(str(folder / LOSS_STATE_FILE)), strict=False)
        state = torch.load(folder / STATE_FILE, weights_only=True)
        self.step = int(state["step"])
        self.best_score = state["best_score"]
        self.best_step = state["best_step"]
        self.best_interpolation = state.get("best_interpolation")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        rank = distributed.rank()
        if len(state["torch_rng"]) != distributed.world_size():
            raise ConfigError(
                f"the checkpoint in {folder} was written by {len(state['torch_rng'])} processes; "
                f"resume it with as many (this run has {distributed.world_size()})"
            )
        torch.set_rng_state(state["torch_rng"][rank])
        if state["cuda_rng"][rank].numel():
            torch.cuda.set_rng_state(state["cuda_rng"][rank])
        return True

    # -- one optimisation step ---------------------------------------------------------------------------
    def train_step(self, batch: TextBatch) -> float:
        self.encoder.train()
        self.loss.train()
        scale = self.scaler.scale if self.scaler is not None else (lambda value: value)
        if self.settings.mini_batch_size is not None:
            value = grad_cache_backward(
                self.encoder, self.loss, batch, self.settings.mini_batch_size, self.dtype, scale
            )
        else:
            with autocast(self.dtype, self.encoder.device):
                if isinstance(self.loss, Objective):
                    value = self.loss(self.encoder, batch)
                else:
                    embedded = embed_batch(self.encoder, batch)
            if not isinstance(self.loss, Objective):
                value = self.loss(embedded)
            scale(value).backward()
        distributed.average_gradients([p for group in self.optimizer.param_groups for p in group["params"]])
        if not torch.isfinite(value):
            raise FloatingPointError(f"the loss is {value.item()} at step {self.step + 1}")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.settings.max_grad_norm is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.settings.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(value.detach())


def _fusable(params: list[nn.Parameter]) -> bool:
    """Whether torch has a fused AdamW for ``params``: floating point, on the CPU or a CUDA device."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def _trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state of ``module`` that training changes: trainable parameters and buffers (queues, statistics).

    Frozen parameters (a guide model, a generator) are left out: they are reloaded from where they came from.
    """
    # remove_duplicate=False: a tied weight (a masked LM's decoder) must be recognised as frozen under every name.
    frozen = {name for name, param in module.named_parameters(remove_duplicate=False) if not param.requires_grad}
    return {
        name: tensor.detach().contiguous().clone()
        for name, tensor in module.state_dict().items()
        if name not in frozen
    }


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled row order of an epoch: a function of the seed and the epoch alone, so resume can replay it."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


# -- checkpoint folders -----------------------------------------------------------------------------------------
# A save never replaces the only complete checkpoint: the next one is written completely in a hidden folder (its
# step in complete.json, written last), the current one steps aside as checkpoint-<step>, the new one takes the
# name checkpoint/, and only then is the old one deleted. A process killed at any moment leaves at least one
# complete checkpoint folder, and resume takes the one with the highest step.
def _publish_checkpoint(output_dir: Path, step: int, write: Callable[[Path], None]) -> None:
    """Save the checkpoint of ``step`` as ``output_dir/checkpoint``: ``write(folder)`` writes its files."""
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=output_dir))
    try:
        write(staging)
        fsync_tree(staging)  # a checkpoint marked complete must also be complete after a power loss
        (staging / COMPLETE_FILE).write_text(json.dumps({"step": step}) + "\n")
        fsync_file(staging / COMPLETE_FILE)
        fsync_directory(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    current = output_dir / CHECKPOINT_DIR
    previous = _complete_step(current) if current.is_dir() else None
    if previous is not None:
        os.replace(current, output_dir / f"{CHECKPOINT_DIR}-{previous}")
    elif current.is_dir():
        _discard(current)  # an incomplete folder: no checkpoint is lost with it
    os.replace(staging, current)
    fsync_directory(output_dir)
    _discard_checkpoints(output_dir, keep=current)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint folder of ``output_dir`` with the highest step, or ``None`` when there is none.

    Raises:
        ConfigError: there are checkpoint folders, but none is complete, so the run cannot resume.
    """
    folders = _checkpoint_folders(output_dir)
    steps = {folder: step for folder in folders if (step := _complete_step(folder)) is not None}
    if steps:
        return max(steps, key=steps.__getitem__)
    if folders:
        names = ", ".join(sorted(folder.name for folder in folders))
        raise ConfigError(
            f"{output_dir} holds no complete checkpoint to resume from ({names}: no {COMPLETE_FILE} or "
            f"{STATE_FILE}); delete them to train again from step 0"
        )
    return None


def _discard_checkpoints(output_dir: Path, keep: Path | None = None) -> None:
    """Delete every checkpoint folder of ``output_dir`` but ``keep``, and what interrupted saves left behind.

    Without ``keep``, for a run that starts from step 0: it must never later resume from the checkpoints of the
    run it replaces.
    """
    for folder in _checkpoint_folders(output_dir, staging=True):
        if folder != keep:
            _discard(folder)


def _checkpoint_folders(output_dir: Path, staging: bool = False) -> list[Path]:
    """``checkpoint/``, the ``checkpoint-<step>/`` stepped aside and legacy ``.checkpoint.old-*`` folders; with
    ``staging``, also the unfinished and half-deleted folders a killed save left behind."""
    found = [output_dir / CHECKPOINT_DIR]
    # checkpoint-<step> only: not a folder the user named checkpoint-something
    found += sorted(p for p in output_dir.glob(f"{CHECKPOINT_DIR}-*") if p.name.split("-", 1)[1].isdigit())
    for pattern in [_LEGACY_ASIDE_PATTERN, *([f"{_STAGING_PREFIX}*", f"{_DISCARDED_PREFIX}*"] if staging else [])]:
        found += sorted(output_dir.glob(pattern))
    return [folder for folder in found if folder.is_dir()]


def _complete_step(folder: Path) -> int | None:
    """The step of the checkpoint in ``folder``, or ``None`` when its save did not finish."""
    marker = folder / COMPLETE_FILE
    if marker.is_file():
        return int(json.loads(marker.read_text())["step"])
    if (folder / STATE_FILE).is_file():
        # a checkpoint from before complete.json: its state file was written last
        return int(torch.load(folder / STATE_FILE, weights_only=True, mmap=True)["step"])
    return None


def _discard(folder: Path) -> None:
    """Delete ``folder``, renaming it first so that a half-deleted checkpoint never looks like one."""
    if folder.name.startswith(_DISCARDED_PREFIX):
        shutil.rmtree(folder)
        return
    trash = folder.with_name(f"{_DISCARDED_PREFIX}{folder.name}")
    shutil.rmtree(trash, ignore_errors=True)  # left by an earlier, interrupted delete
    os.replace(folder, trash)
    shutil.rmtree(trash)


def _truncate_log(path: Path, after_step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run restarts from, and a last line that the
    interrupted run was killed while writing."""
    if not path.exists():
        return
    text = path.read_text()
    lines = text.splitlines()
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not text.endswith("\n"):
                break  # cut short by the crash
            raise DataError("not a JSON log record", str(path), number) from None
        if record.get("step", 0) <= after_step:
            kept.append(line)
    if len(kept) < len(lines):
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


@contextlib.contextmanager
def _truncated(encoder: Encoder, max_seq_length: int | None) -> Iterator[None]:
    """Inputs truncated to ``max_seq_length`` tokens inside the block (``None``: unchanged)."""
    if max_seq_length is None:
        yield
        return
    inference_length = encoder.max_seq_length
    encoder.max_seq_length = max_seq_length
    try:
        yield
    finally:
        encoder.max_seq_length = inference_length


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every tensor of ``module``'s state, to restore or interpolate later."""
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def interpolate_weights(
    start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], weight: float
) -> dict[str, torch.Tensor]:
    """WiSE-FT: ``(1 - weight) * start + weight * end`` for floating-point tensors; others (step counters,
    position ids) are ``end``'s. ``weight = 0`` is ``start`` exactly and ``weight = 1`` is ``end``."""
    if start.keys() != end.keys():
        raise ConfigError("cannot interpolate the weights of two different models")
    return {
        name: torch.lerp(start[name], end[name], weight) if end[name].is_floating_point() else end[name]
        for name in end
    }


def _load_saved_model(encoder: Encoder, folder: Path) -> None:
    """Load the weights of a model ``encoder.save`` wrote into ``encoder`` (the inference modules only)."""
    from sentence_transformers import SentenceTransformer

    with quiet_library_bars():
        saved = SentenceTransformer(str(folder), device=str(encoder.device))
    encoder.model.load_state_dict(saved.state_dict())


def _save_model(encoder: Encoder, loss: nn.Module, path: Path, card: ModelCard) -> None:
    """The encoder, the heads its objective trained beside it (a reward head, DiffCSE's) and the model card, in
    one atomic save."""
    with atomic_directory(path) as tmp:
        encoder.save(tmp)
        if isinstance(loss, Objective):
            loss.save_heads(tmp)
        write_model_card(tmp, card, name=str(path))


def column_prompts(encoder: Encoder, prompts: ColumnPrompts | None = None) -> ColumnPrompts:
    """The prompts of each training column, made the model's: ``prompts`` where they give one, else the anchor gets
    the model's query prompt, the positive its document prompt and the negatives the positive's. The anchor's and
    the positive's become the model's ``query`` and ``document`` prompts (saved with it).

    Raises:
        ConfigError: a prompt, and a pooling that leaves prompt tokens out (``include_prompt=False``): training
            puts prompts into the texts, where pooling cannot tell them apart, so the model would train on other
            embeddings than it gives at inference.
    """
    prompts = prompts or ColumnPrompts()
    anchor = prompts.anchor if prompts.anchor is not None else resolve_prompt(encoder.prompts, QUERY)
    positive = prompts.positive if prompts.positive is not None else resolve_prompt(encoder.prompts, DOCUMENT)
    resolved = ColumnPrompts(anchor, positive, prompts.negative if prompts.negative is not None else positive)
    if any((resolved.anchor, resolved.positive, resolved.negative)) and any(
        getattr(module, "include_prompt", True) is False for module in encoder.model
    ):
        raise ConfigError(
            f"model {encoder.name!r} pools without its prompt tokens (include_prompt=false), which training with "
            "prompts cannot reproduce; give every column an empty prompt, or use a pooling that includes them"
        )
    encoder.prompts.update(query=resolved.anchor, document=resolved.positive)
    return resolved


def fit(
    encoder: Encoder,
    examples: Sequence[Example] | Table,
    loss: nn.Module,
    settings: FitSettings = FitSettings(),
    *,
    kind: Kind | str | None = None,
    evaluator: Evaluator | None = None,
    callbacks: Sequence[StepCallback] = (),
    source: str | None = None,
    negatives: NegativeMiner | None = None,
    prompts: ColumnPrompts | None = None,
) -> FitResult:
    """Train ``encoder`` on ``examples`` with ``loss``.

    Args:
        encoder: the model to train, in place. With an evaluator it ends holding the best model's weights (the
            start model's if nothing beat it), else the final weights. Its :meth:`~embedkit.encoders.Encoder.encode`
            runs in torch during the run, whatever its backend.
        examples: training rows (see :func:`embedkit.read_examples`), all of kind ``kind``; or an in-memory
            table (a list of dicts, a ``datasets.Dataset``, a pandas ``DataFrame``) read as ``read_examples`` does.
        loss: a loss from :mod:`embedkit.losses` (``EmbeddedBatch -> scalar``), or an
            :class:`~embedkit.losses.objective.Objective` (``(encoder, TextBatch) -> scalar``).
        settings: optimisation, evaluation and checkpoint settings.
        kind: the data kind of ``examples``; default: ``examples.kind`` (set by :func:`embedkit.read_examples`).
        evaluator: an :class:`~embedkit.types.Evaluator`, run on the start model, every ``settings.eval_steps``
            steps, at the end and on each interpolation; the best by its primary metric (highest or lowest, as
            its ``higher_is_better`` says) is saved in ``best/``.
        callbacks: called as ``callback(step, metrics)`` after every optimisation step.
        source: where the examples came from, for the model card (default: their count and kind).
        negatives: mine hard negatives for the (anchor, positive) ``examples`` with the model being trained,
            before the first step and every ``negatives.every`` steps (see :mod:`embedkit.training.negatives`);
            training then runs on the mined triplets.
        prompts: the prompts of each column (see :func:`column_prompts`); by default the model's query prompt for
            anchors and its document prompt for positives and negatives, none for a model without prompts.

    Returns:
        A :class:`FitResult`; the models are in ``settings.output_dir`` (``best/`` and ``final/``).
    """
    with encoder.torch_backend():  # evaluation and mining see the weights being trained, step by step
        return _fit(encoder, examples, loss, settings, kind=kind, evaluator=evaluator, callbacks=callbacks,
                    source=source, negatives=negatives, prompts=prompts)


def _fit(
    encoder: Encoder,
    examples: Sequence[Example] | Table,
    loss: nn.Module,
    settings: FitSettings,
    *,
    kind: Kind | str | None,
    evaluator: Evaluator | None,
    callbacks: Sequence[StepCallback],
    source: str | None,
    negatives: NegativeMiner | None,
    prompts: ColumnPrompts | None,
) -> FitResult:
    """:func:`fit`, with ``encoder`` encoding in torch."""
    _check_settings(settings, loss, evaluator)
    if encoder.device.type == "cpu":
        keep_freed_memory()  # a sixth of a CPU step went to page faults of freed and reallocated tensors
    examples = as_examples(examples, kind)
    kind = Kind(kind) if kind is not None else getattr(examples, "kind", None)
    if kind is None:
        raise ConfigError("fit() needs kind= when the examples do not come from read_examples()")
    # Under torchrun every optimisation step consumes one batch per rank: rank r takes the r-th slice.
    world, rank = distributed.world_size(), distributed.rank()
    global_batch = settings.batch_size * world
    steps_per_epoch = len(examples) // global_batch
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{len(examples)} examples do not fill one batch of {settings.batch_size} x {world} processes"
        )
    total_steps = settings.max_steps if settings.max_steps is not None else settings.epochs * steps_per_epoch
    prompts = column_prompts(encoder, prompts)
    if isinstance(loss, Objective):
        loss.setup(encoder)
    run = _Run(encoder, loss, settings, total_steps)
    main_process = distributed.is_main_process()
    if main_process:
        run.output_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    log_path = run.output_dir / "log.jsonl"
    start_path = run.output_dir / START_FILE
    result = FitResult(steps=total_steps, output_dir=run.output_dir)

    resumed = settings.resume and run.load_checkpoint()
    if resumed:
        if main_process:
            logger.info("resuming the run in %s at step %d of %d", run.output_dir, run.step, total_steps)
            _truncate_log(log_path, run.step)
        distributed.barrier()
        result.history = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
        evals = [record["eval"] for record in result.history if "eval" in record]
        result.first_eval = evals[0] if evals else None
        result.last_eval = evals[-1] if evals else None
    else:
        torch.manual_seed(settings.seed + rank)
        if main_process:
            log_path.unlink(missing_ok=True)
            _discard_checkpoints(run.output_dir)
            if settings.interpolation:
                atomic_write_bytes(start_path, safetensors_bytes(_snapshot(encoder)))
    result.start_step = run.step
    pairs, mined_at = examples, None
    if negatives is not None:
        kind = Kind.TRIPLETS
        restored = load_mined(run.output_dir, run.step) if resumed else None
        if restored is not None:
            mined_at, examples = restored
    primary = evaluator.primary_metric if evaluator is not None else None
    card_base = dict(
        base_model=encoder.name,
        objective=f"{type(loss).__name__}({loss.extra_repr()})",
        data=source or f"{len(examples)} {kind.value} rows",
        precision=str(run.dtype).removeprefix("torch."),
        max_seq_length=encoder.max_seq_length,
        train_max_seq_length=settings.max_seq_length or encoder.max_seq_length,
        dev_metric=primary,
    )
    best_state: dict[str, torch.Tensor] | None = None

    def log(record: dict[str, Any]) -> None:
        result.history.append(record)
        if main_process:
            with log_path.open("a") as file:
                file.write(json.dumps(record) + "\n")

    def evaluate(interpolation: float | None = None, tuned_step: int | None = None) -> None:
        # Rank 0 evaluates and saves; the others wait and learn the verdict, so all agree on the best model.
        # An interpolation is chosen under the step of its fine-tuned end, ``tuned_step``, and logged at the step
        # it was made (a resumed run drops the log's records after its checkpoint's step, these among them).
        nonlocal best_state
        step = run.step if tuned_step is None else tuned_step
        with stage("dev"):
            metrics = evaluator(encoder) if main_process else None
        metrics = distributed.broadcast_object(metrics)
        if main_process:
            model = f"step {step}" if interpolation is None else f"interpolation {interpolation} of step {step}"
            logger.info("%s: dev %s %.4g", model, primary, metrics[primary])
        # embedkit's evaluators say how their scores are scaled; another evaluator's scale is its own business
        scale = scale_fields(metrics) if isinstance(evaluator, ScaledScores) else {}
        mixed = {} if interpolation is None else {"interpolation": interpolation, "of_step": step}
        log({"step": run.step, **mixed, "eval": metrics, **scale})
        if result.first_eval is None:
            result.first_eval = metrics
        if interpolation is None:
            result.last_eval = metrics
        score = metrics[primary]
        if not _better(score, run.best_score, evaluator.higher_is_better):
            return
        run.best_score, run.best_step, run.best_interpolation = score, step, interpolation
        best_state = _snapshot(encoder)
        if main_process:
            chosen = f"step {step}" if interpolation is None else (
                f"interpolation {interpolation} between the start model and step {step} (WiSE-FT)")
            card = ModelCard(
                steps=step, dev_before=result.first_eval, dev_after=metrics, chosen=chosen, **card_base
            )
            _save_model(encoder, loss, run.output_dir / "best", card)
        distributed.barrier()

    finished = resumed and run.step >= total_steps
    if finished:
        # nothing to train: hand back what the run made, and write nothing
        result.best_score, result.best_step = run.best_score, run.best_step
        result.best_interpolation = run.best_interpolation
        result.metric = primary
        if evaluator is not None and (run.output_dir / "best").is_dir():
            _load_saved_model(encoder, run.output_dir / "best")
        return result

    if evaluator is not None and run.step == 0:
        evaluate()

    progress = progress_bar(
        "train", total_steps, unit="step", show=settings.show_progress and main_process, initial=run.step
    )
    started = time.perf_counter()
    last_eval_step = run.step if evaluator is not None and run.step == 0 else -1
    while run.step < total_steps:
        if negatives is not None and negatives.due(run.step) and mined_at != run.step:
            examples = distributed.broadcast_object(negatives(encoder, pairs) if main_process else None)
            mined_at = run.step
            if main_process:
                save_mined(run.output_dir, run.step, examples)
            log({"step": run.step, "mined": mining_summary(examples, negatives.num_negatives)})
        epoch, position = divmod(run.step, steps_per_epoch)
        order = _epoch_order(len(examples), settings.seed, epoch)
        start = position * global_batch + rank * settings.batch_size
        rows = order[start : start + settings.batch_size]
        with _truncated(encoder, settings.max_seq_length):
            value = distributed.mean(run.train_step(collate([examples[i] for i in rows], kind, prompts)))
        metrics = {"loss": value, "lr": run.scheduler.get_last_lr()[0]}
        progress.update(1)
        progress.set_postfix(loss=f"{value:.4f}", lr=f"{metrics['lr']:.2e}")
        if run.step % settings.log_steps == 0 or run.step == total_steps:
            log({"step": run.step, "epoch": epoch, **metrics, "elapsed_s": time.perf_counter() - started})
        if evaluator is not None and run.step % settings.eval_steps == 0:
            evaluate()
            last_eval_step = run.step
        if run.step % settings.save_steps == 0 and run.step < total_steps:
            run.save_checkpoint()
        for callback in callbacks:
            callback(run.step, metrics)
    progress.close()

    if evaluator is not None and last_eval_step != run.step:
        evaluate()
    if main_process:
        card = ModelCard(steps=run.step, dev_before=result.first_eval or {}, dev_after=result.last_eval or {},
                         chosen=f"the last step ({run.step})", **card_base)
        _save_model(encoder, loss, run.output_dir / "final", card)
    if evaluator is not None and settings.interpolation:
        final_state = _snapshot(encoder)
        tuned_step, tuned_state = run.step, final_state
        if run.best_step:  # a trained step beat the start: mix that one, not the last
            if best_state is None:  # found before this call resumed
                _load_saved_model(encoder, run.output_dir / "best")
                best_state = _snapshot(encoder)
            tuned_step, tuned_state = run.best_step, best_state
        start_state = load_file(str(start_path), device=str(encoder.device))
        for weight in settings.interpolation:
            encoder.load_state_dict(interpolate_weights(start_state, tuned_state, weight))
            evaluate(interpolation=weight, tuned_step=tuned_step)
        encoder.load_state_dict(final_state)
    run.save_checkpoint()
    if best_state is not None:
        encoder.load_state_dict(best_state)
    elif evaluator is not None and run.best_step != run.step and (run.output_dir / "best").is_dir():
        _load_saved_model(encoder, run.output_dir / "best")  # the best was found before this call resumed
    result.best_score, result.best_step = run.best_score, run.best_step
    result.best_interpolation = run.best_interpolation
    result.metric = primary
    return result


def _better(score: float, best: float | None, higher_is_better: bool) -> bool:
    if best is None:
        return True
    return score > best if higher_is_better else score < best


def _check_settings(settings: FitSettings, loss: nn.Module, evaluator: Evaluator | None) -> None:
    """Errors for settings that cannot work together, before anything is loaded or written."""
    if settings.mini_batch_size is not None:
        if settings.mini_batch_size < 1:
            raise ConfigError(f"mini_batch_size must be at least 1, got {settings.mini_batch_size}")
        if isinstance(loss, Objective):
            raise ConfigError(
                f"{type(loss).__name__} needs the tokens of the whole batch at once, so it cannot be split into "
                "mini-batches (gradient caching works with embedding losses only); unset mini_batch_size"
            )
    if settings.batch_size < 2:
        raise ConfigError("batch_size must be at least 2 for in-batch negatives")
    if settings.max_seq_length is not None and settings.max_seq_length < 1:
        raise ConfigError(f"max_seq_length must be at least 1, got {settings.max_seq_length}")
    bad = [weight for weight in settings.interpolation if not 0 < weight < 1]
    if bad:
        raise ConfigError(f"interpolation weights must lie strictly between 0 and 1 (0 is the start, 1 the final "
                          f"model, both always evaluated), got {', '.join(map(str, bad))}")
    if settings.interpolation and evaluator is None:
        raise ConfigError("interpolation picks its weight on a dev set: give an evaluator ([eval] in a recipe)")
    if evaluator is not None and not isinstance(evaluator, Evaluator):
        raise ConfigError(
            f"{type(evaluator).__name__} is not an evaluator: it needs primary_metric, higher_is_better and "
            "__call__(encoder) -> metrics"
        )
