"""The one place a :class:`~embedkit.types.TextBatch` becomes an :class:`~embedkit.types.EmbeddedBatch`.

Every loss and objective gets its embeddings from :func:`embed_batch`, and under ``torchrun`` the candidates of
every process are gathered here (DESIGN.md, principles 3 and 7), so no objective can forget to gather.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

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
