"""Reward models on encoders, and reward-model representations as embeddings.

Two kinds of reward model load here, through one loader (:func:`load_reward_model`):

- an embedkit reward model: a sentence encoder with a :class:`RewardHead` saved beside it in
  ``embedkit_heads/reward.*`` (what a ``reward-bt`` training run writes), as a :class:`RewardModel`;
- a Hugging Face ``AutoModelForSequenceClassification`` reward model (folder or hub name), as a
  :class:`RewardModelEncoder`, whose pooled last hidden state is a representation of the ``(prompt, response)``
  pair shaped by human preferences (Wang et al., 2024, Secrets of RLHF II; Nath et al., 2024, Learning
  Goal-Conditioned Representations for Language Reward Models).

Both score pairs with ``score(prompts, responses)``; :func:`load_reward_model_encoder` gives the encoder whose
embeddings are the representations the reward is read from, to index, search, cluster and evaluate like any
embedding.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedkit.data.render import render_for
from embedkit.encoders.heads import has_head, read_head, write_head
from embedkit.encoders.locate import cache_only
from embedkit.encoders.sentence_transformer import Encoder, load_encoder
from embedkit.errors import ConfigError, EmbedkitError
from embedkit.fsutil import atomic_directory
from embedkit.precision import PrecisionMixin, autocast
from embedkit.progress import quiet_library_bars
from embedkit.types import TextEncoder

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

REWARD_HEAD = "reward"
REWARD_POOLING = ("last", "mean", "cls")


def pool(hidden: Tensor, mask: Tensor, pooling: str) -> Tensor:
    """``[B, T, H]`` hidden states and ``[B, T]`` attention mask -> ``[B, H]``.

    ``"last"`` takes the last attended token (what decoder reward models score; correct for left and right
    padding), ``"cls"`` the first position, ``"mean"`` the mean over attended tokens.
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if pooling == "last":
        last = mask.shape[1] - 1 - mask.flip(1).long().argmax(dim=1)  # index of the last 1 in each row
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ConfigError(f"unknown pooling {pooling!r}; valid: {', '.join(REWARD_POOLING)}")


class RewardModelEncoder(PrecisionMixin):
    """A Hugging Face sequence-classification model as an encoder: pooled last hidden states are the embedding.

    Args:
        model: an ``AutoModelForSequenceClassification`` model.
        tokenizer: its (fast) tokenizer.
        name: the name or path it was loaded from.
        pooling: ``"last"``, ``"mean"`` or ``"cls"`` (see :func:`pool`).
        max_seq_length: inputs are truncated to this many tokens.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see :mod:`embedkit.precision`).
    """

    model: PreTrainedModel

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        pooling: str,
        max_seq_length: int,
        precision: str = "auto",
    ) -> None:
        if pooling not in REWARD_POOLING:
            raise ConfigError(f"unknown pooling {pooling!r}; valid: {', '.join(REWARD_POOLING)}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.pooling = pooling
        self.max_seq_length = max_seq_length
        self.precision = precision
        self.compute_dtype()  # an unknown precision fails here, not at the first batch

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def prompts(self) -> dict[str, str]:
        """A reward model names no prompts."""
        return {}

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        normalize: bool = False,
        show_progress: bool | None = None,
        *,
        prompt: str | None = None,
    ) -> np.ndarray:
        """Float32 ``[n, D]`` pooled last hidden states of ``texts`` (each after ``prompt``), in input order."""
        return self._run([(prompt or "") + text for text in texts], batch_size, normalize)[0]

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Float32 ``[n]`` rewards (the model's single logit) of ``(prompts[i], responses[i])``.

        Pairs are rendered with :func:`embedkit.data.render.render_pair` (prompt + response as one text, prompt
        cut from the left); a model trained with a chat template may expect another format.

        Raises:
            EmbedkitError: the model has more than one output label, so it is not a scalar reward model.
        """
        labels = int(self.model.config.num_labels)
        if labels != 1:
            raise EmbedkitError(f"{self.name} has {labels} output labels; a reward model has exactly 1")
        return self._run(render_for(self, prompts, responses), batch_size, normalize=False)[1]

    def _run(self, texts: Sequence[str], batch_size: int, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
        """``([n, D] embeddings, [n] first logits)``; texts are batched longest first so batches pad little."""
        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        embeddings = np.zeros((len(texts), self.dim), dtype=np.float32)
        logits = np.zeros(len(texts), dtype=np.float32)
        dtype = self.compute_dtype()
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            inputs = self.tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.no_grad(), autocast(dtype, self.device):
                output = self.model(**inputs, output_hidden_states=True)
            pooled = pool(output.hidden_states[-1].float(), inputs["attention_mask"], self.pooling)
            if normalize:
                pooled = F.normalize(pooled, dim=-1)
            embeddings[rows] = pooled.cpu().numpy()
            logits[rows] = output.logits[:, 0].float().cpu().numpy()
        return embeddings, logits


class RewardHead(nn.Module):
    """``[B, D] -> [B]``: the scalar reward ``w . (sqrt(D) h / |h|) + b`` of pooled representations ``h``.

    The representation is rescaled to unit root-mean-square per coordinate (an RMS norm without gain) before
    the linear layer: sentence encoders often L2-normalise their output (all-MiniLM-L6-v2 does), and a
    ``Linear(D, 1)`` over unit vectors starts with rewards within about +-1 that grow only as fast as a
    fine-tuning learning rate lets the weights grow. At unit RMS the standard ``nn.Linear`` initialisation and
    the encoder's learning rate suit the head, and the reward depends on the direction of ``h`` only, as cosine
    similarity does.

    Args:
        dim: the representation size ``D``; ``None`` infers it from the first batch (``nn.LazyLinear``), which
            lets a recipe build the objective before the encoder is known.
    """

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.linear = nn.LazyLinear(1) if dim is None else nn.Linear(dim, 1)

    @property
    def dim(self) -> int:
        return int(self.linear.in_features)

    def forward(self, representations: Tensor) -> Tensor:
        h = representations.float()
        return self.linear(F.normalize(h, dim=-1) * math.sqrt(h.shape[-1])).squeeze(-1)


class RewardModel(nn.Module):
    """An encoder and its reward head: ``score(prompts, responses) -> [n]`` rewards.

    Inputs are rendered like in training (:func:`embedkit.data.render.render_pair`), embedded with the encoder's
    inference path (:meth:`Encoder.encode`, no dropout, no MLP head) and scored by the head in float32.
    """

    def __init__(self, encoder: Encoder, head: RewardHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    @property
    def name(self) -> str:
        return self.encoder.name

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Float32 ``[n]`` rewards of ``(prompts[i], responses[i])``."""
        representations = self.encoder.encode(render_for(self.encoder, prompts, responses), batch_size=batch_size)
        device = next(self.head.parameters()).device
        with torch.no_grad():
            rewards = self.head(torch.from_numpy(representations).to(device))
        return rewards.cpu().numpy().astype(np.float32)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """A sentence-transformers folder with ``embedkit_heads/reward.*`` beside it, written atomically."""
        with atomic_directory(path) as tmp:
            self.encoder.save(tmp)
            write_reward_head(self.head, tmp)
        return Path(path)


def write_reward_head(head: RewardHead, folder: str | os.PathLike[str]) -> Path:
    """Save ``head`` beside the model in ``folder`` (``embedkit_heads/reward.*``); returns the weights file."""
    return write_head(folder, REWARD_HEAD, head.state_dict(), {"dim": head.dim})


def has_reward_head(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a local folder holding an embedkit reward head."""
    return has_head(path, REWARD_HEAD)


def load_reward_model(
    name_or_path: str | os.PathLike[str],
    *,
    pooling: str | None = None,
    max_seq_length: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
) -> RewardModel | RewardModelEncoder:
    """The one reward-model loader: an embedkit reward model, or a Hugging Face sequence classifier.

    Args:
        name_or_path: a folder with ``embedkit_heads/reward.*`` (saved by :meth:`RewardModel.save` or a
            ``reward-bt`` run), or a Hugging Face sequence-classification model (folder or hub name).
        pooling: ``"last"``, ``"mean"`` or ``"cls"``; ``None`` keeps an embedkit model's own pooling (the one its
            head was trained on) and means ``"last"`` for a Hugging Face model.
        max_seq_length: truncate inputs to this many tokens; default: the model's own length.
        device: default CUDA when available.
        precision: compute precision.

    Returns:
        A :class:`RewardModel` or a :class:`RewardModelEncoder`; both have ``score(prompts, responses)``.

    Raises:
        EmbedkitError: a local folder that holds no reward head and no sequence classifier (a plain encoder,
            say), or a model that cannot be loaded.
    """
    if pooling is not None and pooling not in REWARD_POOLING:
        raise ConfigError(f"unknown pooling {pooling!r}; valid: {', '.join(REWARD_POOLING)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = str(name_or_path)
    if has_reward_head(name):
        encoder = load_encoder(name, pooling=pooling, max_seq_length=max_seq_length, device=device, precision=precision,
                               backend="torch")  # reward models run in torch, as sequence classifiers must
        tensors, config = read_head(name, REWARD_HEAD)
        dim = config.get("dim")
        if not isinstance(dim, int):
            raise EmbedkitError(f"{name}: the reward head's configuration has no integer dim (got {dim!r})")
        head = RewardHead(dim)
        head.load_state_dict(tensors)
        return RewardModel(encoder, head.to(encoder.device)).eval()
    if Path(name).exists() and not _is_sequence_classifier(Path(name)):
        raise EmbedkitError(
            f"{name} holds no reward head (no embedkit_heads/reward.json) and no sequence-classification model: "
            "it is not a reward model; train one with the loss 'reward-bt', or evaluate the encoder in "
            "similarity mode"
        )
    return _load_sequence_classifier(name, pooling or "last", max_seq_length, device, precision)


def load_reward_model_encoder(
    name_or_path: str | os.PathLike[str],
    pooling: str | None = None,
    *,
    max_seq_length: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
) -> TextEncoder:
    """The encoder of a reward model (see :func:`load_reward_model` for the arguments): an embedkit reward
    model's :class:`~embedkit.encoders.Encoder`, whose embeddings are the representations its head reads, or a
    :class:`RewardModelEncoder`."""
    model = load_reward_model(
        name_or_path, pooling=pooling, max_seq_length=max_seq_length, device=device, precision=precision
    )
    return model.encoder if isinstance(model, RewardModel) else model


def _is_sequence_classifier(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def _load_sequence_classifier(
    name: str, pooling: str, max_seq_length: int | None, device: str | torch.device, precision: str
) -> RewardModelEncoder:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    offline = cache_only(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
        with quiet_library_bars():
            model = AutoModelForSequenceClassification.from_pretrained(name, local_files_only=offline).to(device)
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EmbedkitError(f"cannot load {name!r} as a sequence-classification reward model: {reason}") from error
    if tokenizer.pad_token is None:
        # decoder reward models often ship without a pad token; padded positions are masked out anyway, and
        # the classification head finds each row's last token through config.pad_token_id
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    positions = getattr(model.config, "max_position_embeddings", tokenizer.model_max_length)
    limit = min(tokenizer.model_max_length, positions)
    return RewardModelEncoder(model, tokenizer, name, pooling, max_seq_length or int(limit), precision=precision)
