"""Matryoshka truncation at inference: an embedding cut to its first ``dim`` dimensions (Kusupati et al., 2022).

A model trained with :class:`~embedkit.losses.matryoshka.MatryoshkaLoss` packs the most information into the
leading dimensions, so its embeddings can be cut to ``dim`` columns for a smaller index. A cut unit vector is no
longer of length 1; where the model's own embeddings are normalised (a ``Normalize`` module last), the cut is
normalised again, so that ``truncate_dim`` changes the size and nothing else. sentence-transformers' own
``truncate_dim`` cuts without normalising again; cosine scores are the same either way.

:class:`TruncatedEncoder` is the same cut as a view over any encoder: wrapped around an encoder that caches its
embeddings, the metrics at several sizes need the texts embedded once (:func:`embedkit.eval.report.dimension_curve`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedkit.errors import ConfigError
from embedkit.types import TextEncoder

Embeddings = TypeVar("Embeddings", np.ndarray, Tensor)


def check_truncate_dim(truncate_dim: int | None, full_dim: int) -> int | None:
    """``truncate_dim`` when it is ``None`` or an integer from 1 to ``full_dim``.

    Raises:
        ConfigError: any other value, naming the model's size.
    """
    if truncate_dim is None:
        return None
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int | np.integer) or truncate_dim < 1:
        raise ConfigError(f"truncate_dim must be a positive integer, got {truncate_dim!r}")
    if truncate_dim > full_dim:
        raise ConfigError(f"truncate_dim {truncate_dim} exceeds the {full_dim} dimensions of the model's embeddings")
    return int(truncate_dim)


def truncated(embeddings: Embeddings, dim: int | None, normalize: bool) -> Embeddings:
    """``[n, D]`` embeddings cut to ``[n, dim]`` (``None``: kept whole), L2-normalised when ``normalize``."""
    if dim is not None:
        embeddings = embeddings[..., :dim]
    if not normalize:
        return embeddings
    if isinstance(embeddings, Tensor):
        return F.normalize(embeddings, dim=-1)
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return (embeddings / np.maximum(norms, 1e-12)).astype(np.float32)


def ends_normalized(model: nn.Module) -> bool:
    """Whether a sentence-transformers model's last module L2-normalises its embeddings."""
    from sentence_transformers.sentence_transformer.modules import Normalize

    modules = list(model)  # type: ignore[call-overload]  # a SentenceTransformer is a Sequential
    return bool(modules) and isinstance(modules[-1], Normalize)


class TruncatedEncoder:
    """An encoder's embeddings cut to their first ``dim`` dimensions, normalised again when the encoder's own are.

    Name, model, precision, device and length are the wrapped encoder's, so an index built through the view
    records the encoder's model and the cut (:mod:`embedkit.index`).

    Args:
        encoder: an :class:`~embedkit.encoders.Encoder` (or a wrapper that passes its attributes on); its
            embeddings must be at least ``dim`` wide.
        dim: the dimensions kept.
    """

    def __init__(self, encoder: TextEncoder, dim: int) -> None:
        check_truncate_dim(dim, encoder.dim)
        self.encoder = encoder
        self.truncate_dim = int(dim)
        # an encoder that says nothing (a reward model's) gives embeddings of any length
        self.normalized = bool(getattr(encoder, "normalizes", False))

    @property
    def dim(self) -> int:
        return self.truncate_dim

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def source(self) -> str:
        return getattr(self.encoder, "source", self.encoder.name)

    @property
    def precision(self) -> str:
        return self.encoder.precision

    @property
    def model(self) -> nn.Module:
        return self.encoder.model

    @property
    def max_seq_length(self) -> int:
        return self.encoder.max_seq_length

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @property
    def prompts(self) -> Mapping[str, str]:
        return self.encoder.prompts

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        normalize: bool = False,
        show_progress: bool | None = None,
        *,
        prompt: str | None = None,
    ) -> np.ndarray:
        """``n`` texts (each after ``prompt``; ``None``: the model's default prompt) -> float32 ``[n, dim]``."""
        vectors = self.encoder.encode(texts, batch_size=batch_size, show_progress=show_progress, prompt=prompt)
        return truncated(np.asarray(vectors, dtype=np.float32), self.dim, normalize or self.normalized)


__all__ = ["TruncatedEncoder", "check_truncate_dim", "ends_normalized", "truncated"]
