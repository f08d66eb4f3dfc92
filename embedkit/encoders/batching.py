"""The one place a :class:`~embedkit.types.TextBatch` becomes an :class:`~embedkit.types.EmbeddedBatch`, and the
batching of inference.

Every loss and objective gets its embeddings from :func:`embed_batch`, and under ``torchrun`` the candidates of
every process are gathered here (DESIGN.md, principles 3 and 7), so no objective can forget to gather.
:func:`encode_longest_first` batches the texts of an inference backend other than torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from torch import Tensor
from tqdm.auto import tqdm

from embedkit import distributed
from embedkit.types import EmbeddedBatch, TextBatch

EmbedTexts = Callable[[Sequence[str]], Tensor]


def embed_batch(encode: EmbedTexts, batch: TextBatch) -> EmbeddedBatch:
    """Embed anchors and candidates in one forward pass (so each text gets its own dropout mask).

    Args:
        encode: ``n`` texts -> ``[n, D]`` embeddings with gradients (an encoder's training path, ``encoder(texts)``).
        batch: ``B`` anchors and ``C`` candidates.

    Returns:
        ``[B, D]`` anchors and ``[C, D]`` candidates (``[W * C, D]`` when gathered over ``W`` processes).
    """
    texts = [*batch.anchors, *batch.candidates]
    embeddings = encode(texts)
    return embedded_from(embeddings, batch)


def embedded_from(embeddings: Tensor, batch: TextBatch) -> EmbeddedBatch:
    """The :class:`EmbeddedBatch` of ``[B + C, D]`` embeddings already computed for ``batch`` (anchors first),
    with the candidates of every process under ``torchrun``."""
    b = len(batch)
    device = embeddings.device
    embedded = EmbeddedBatch(
        anchors=embeddings[:b],
        candidates=embeddings[b:],
        anchor_groups=batch.anchor_groups.to(device),
        candidate_groups=batch.candidate_groups.to(device),
        scores=None if batch.scores is None else batch.scores.to(device),
    )
    return distributed.gather_candidates(embedded)


def encode_longest_first(
    texts: Sequence[str],
    embed: Callable[[list[str]], np.ndarray],
    batch_size: int,
    dim: int,
    show_progress: bool = False,
) -> np.ndarray:
    """Embed ``n`` texts in batches of ``batch_size``, longest first, so that each batch pads little (as
    sentence-transformers' ``encode`` orders them).

    Args:
        embed: a batch of ``b`` texts -> ``[b, D]`` float32.

    Returns:
        ``[n, D]`` float32, row ``i`` the embedding of ``texts[i]``.
    """
    order = np.argsort([-len(text) for text in texts], kind="stable")
    embeddings = np.empty((len(texts), dim), dtype=np.float32)
    with tqdm(total=len(texts), desc="encode", unit="text", disable=not show_progress) as progress:
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            embeddings[rows] = embed([texts[i] for i in rows])
            progress.update(len(rows))
    return embeddings
