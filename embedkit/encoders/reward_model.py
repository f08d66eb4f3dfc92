"""Reward-model representations as embeddings.

A sequence-classification reward model reads ``(prompt, response)`` and outputs one logit; its last hidden
state is a representation of the pair shaped by human preferences (Wang et al., 2024, Secrets of RLHF II;
Nath et al., 2024, Learning Goal-Conditioned Representations for Language Reward Models). Wrapping it as an
encoder lets those representations be indexed, searched, clustered and evaluated like any embedding.

:func:`load_reward_model_encoder` loads a Hugging Face ``AutoModelForSequenceClassification`` folder or hub
name as a :class:`RewardModelEncoder`, or an embedkit reward model (an encoder with
``embedkit_heads/reward.*``) as its :class:`~embedkit.encoders.Encoder`, whose embeddings are the very
representations its reward head reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from embedkit.encoders.sentence_transformer import _looks_like_local_path
from embedkit.errors import ConfigError, EmbedkitError
from embedkit.precision import autocast, resolve_precision

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


class RewardModelEncoder:
    """A Hugging Face sequence-classification model as an encoder: pooled last hidden states are the embedding.

    Args:
        model: an ``AutoModelForSequenceClassification`` model.
        tokenizer: its (fast) tokenizer.
        name: the name or path it was loaded from.
        pooling: ``"last"``, ``"mean"`` or ``"cls"`` (see :func:`pool`).
        max_seq_length: inputs are truncated to this many tokens.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see :mod:`embedkit.precision`).
    """

    def __init__(
        self, model, tokenizer, name: str, pooling: str, max_seq_length: int, precision: str = "auto"
    ) -> None:
        if pooling not in REWARD_POOLING:
            raise ConfigError(f"unknown pooling {pooling!r}; valid: {', '.join(REWARD_POOLING)}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.pooling = pooling
        self.max_seq_length = max_seq_length
        self.precision = precision
        resolve_precision(precision, self.device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(
        self, texts: Sequence[str], batch_size: int = 32, normalize: bool = False, show_progress: bool | None = None
    ) -> np.ndarray:
        """Float32 ``[n, D]`` pooled last hidden states of ``texts``, in input order."""
        return self._run(texts, batch_size, normalize)[0]

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Float32 ``[n]`` rewards (the model's single logit) of ``(prompts[i], responses[i])``.

        Pairs are rendered with :func:`embedkit.preference.render_pair` (prompt + response as one text, prompt
        cut from the left); a model trained with a chat template may expect another format.

        Raises:
            EmbedkitError: the model has more than one output label, so it is not a scalar reward model.
        """
        from embedkit.preference.render import render_for

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
        dtype = resolve_precision(self.precision, self.device)
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


def load_reward_model_encoder(
    name_or_path: str | os.PathLike[str],
    pooling: str | None = None,
    *,
    max_seq_length: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
):
    """A reward model as an encoder.

    Args:
        name_or_path: an embedkit reward model folder, or a Hugging Face sequence-classification model (folder
            or hub name).
        pooling: ``"last"``, ``"mean"`` or ``"cls"``; ``None`` means ``"last"`` for a Hugging Face model and
            the model's own pooling (the one its reward head was trained on) for an embedkit reward model.
        max_seq_length: truncate inputs to this many tokens; default: the model's maximum.
        device: default CUDA when available.
        precision: compute precision.

    Returns:
        An :class:`~embedkit.encoders.Encoder` for an embedkit reward model, else a :class:`RewardModelEncoder`;
        both have ``encode(texts, batch_size, normalize) -> float32 [n, D]``, ``dim`` and ``name``.

    Raises:
        EmbedkitError: the model cannot be loaded as a sequence-classification model.
    """
    from embedkit.preference.reward import has_reward_head

    if pooling is not None and pooling not in REWARD_POOLING:
        raise ConfigError(f"unknown pooling {pooling!r}; valid: {', '.join(REWARD_POOLING)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = str(name_or_path)
    if has_reward_head(name):
        from embedkit.encoders import load_encoder

        return load_encoder(name, pooling=pooling, max_seq_length=max_seq_length, device=device, precision=precision)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if _looks_like_local_path(name) and not Path(name).exists():
        raise EmbedkitError(f"model folder not found: {name}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForSequenceClassification.from_pretrained(name).to(device)
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
    return RewardModelEncoder(
        model, tokenizer, name, pooling or "last", max_seq_length or int(limit), precision=precision
    )
