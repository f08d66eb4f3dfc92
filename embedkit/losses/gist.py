"""GISTEmbed (Solatorio, 2024): a frozen guide model decides which in-batch candidates are false negatives.

The trained model scores each anchor against a widened candidate set (:func:`gist_scores`): the batch's
candidates (positives and hard negatives), the other anchors, and, seen from the row's positive, the other
positives. The guide embeds the same texts itself (its tokenizer may differ) and scores the same pairs; a
candidate the guide finds more similar to the anchor than the anchor's own positive, less a margin, is dropped
as a likely false negative by :class:`~embedkit.losses.steps.MarginFilter` with ``source="guide"``. What is
left is reduced by InfoNCE's cross-entropy.

This is sentence-transformers' ``GISTEmbedLoss`` on the embedkit score table, so duplicate masking and any
filter step compose with it. Differences: duplicate texts are masked by group id (sentence-transformers leaves
that to a no-duplicates batch sampler); any number of hard-negative columns (sentence-transformers takes at
most one); under ``torchrun`` the anchor-anchor block uses the anchors of every rank, so that each anchor meets
the same candidates as in one process on the whole batch (sentence-transformers uses the local anchors only);
and the relative margin is that of ``MarginFilter``, dropping ``g > g+ (1 - margin)``, where
sentence-transformers drops ``g > g+ - |g+| margin``: the two agree whenever the guide scores the positive at
0 or more.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from embedkit.encoders import Encoder, load_encoder
from embedkit.encoders.batching import embed_batch
from embedkit.errors import ConfigError, EmbedkitError
from embedkit.losses.infonce import cosine_table, info_nce_from_scores
from embedkit.losses.objective import Objective
from embedkit.losses.queue import positive_columns
from embedkit.losses.registry import LOSSES, LossSpec
from embedkit.losses.steps import MarginFilter, MarginMode, MaskDuplicates, Step, apply_steps, with_filters
from embedkit.precision import autocast
from embedkit.types import EmbeddedBatch, Kind, Scores, TextBatch


def gist_scores(batch: EmbeddedBatch, contrast_anchors: bool = True, contrast_positives: bool = True) -> Scores:
    """GISTEmbed's candidate set as one ``[B, C + A + P]`` score table.

    Columns, left to right:

    - ``C``: anchor ``i`` against every candidate (``cos(a_i, c_j)``), exactly as
      :func:`~embedkit.losses.infonce.batch_scores`; row ``i``'s target stays column ``target_offset + i``;
    - ``A`` (``contrast_anchors``): anchor ``i`` against every anchor (``cos(a_i, a_j)``; ``A = B``, or
      ``W * B`` when gathered from ``W`` ranks);
    - ``P`` (``contrast_positives``): positive ``i`` against every positive (``cos(p_i, p_j)``; ``P = B`` or
      ``W * B``).

    Each column carries the group id of its text, so duplicate masking removes ``a_i`` from its own row's ``A``
    block and ``p_i`` from its ``P`` block (sentence-transformers relies on the guide filter for those).
    """
    b = batch.batch_size
    blocks = [cosine_table(batch.anchors, batch.candidates)]
    groups = [batch.candidate_groups]
    if contrast_anchors:
        pool = batch.anchors if batch.anchor_pool is None else batch.anchor_pool
        pool_groups = batch.anchor_groups if batch.anchor_pool_groups is None else batch.anchor_pool_groups
        blocks.append(cosine_table(batch.anchors, pool))
        groups.append(pool_groups)
    if contrast_positives:
        own = batch.candidates[batch.target_offset : batch.target_offset + b]
        columns = positive_columns(batch)
        blocks.append(cosine_table(own, batch.candidates[columns]))
        groups.append(batch.candidate_groups[columns])
    targets = torch.arange(b, device=batch.anchors.device) + batch.target_offset
    return Scores.from_values(
        torch.cat(blocks, dim=1),
        targets,
        anchor_groups=batch.anchor_groups,
        candidate_groups=torch.cat(groups),
    )


def load_guide(guide: str | os.PathLike[str]) -> Encoder:
    """The frozen guide encoder named by a hub name or folder."""
    try:
        return load_encoder(guide)
    except EmbedkitError as error:
        raise EmbedkitError(f"cannot load the GISTEmbed guide model {str(guide)!r}: {error}") from error


def _own_precision(encoder: Encoder) -> contextlib.AbstractContextManager[None]:
    """Run ``encoder`` in its own precision, whatever autocast the trained model runs under."""
    dtype = encoder.compute_dtype()
    if dtype == torch.float32:
        return torch.autocast(encoder.device.type, enabled=False)
    return autocast(dtype, encoder.device)


class GISTEmbedObjective(Objective):
    """GISTEmbed: InfoNCE whose false negatives are filtered by a frozen guide model.

    Data: pairs ``(anchor, positive)``, triplets ``(anchor, positive, negative...)`` or preference rows.
    Input: the encoder and a :class:`~embedkit.types.TextBatch` of ``B`` rows (an objective: the guide needs the
    texts). Output: a scalar.

    Both models embed the batch; :func:`gist_scores` builds the model's ``[B, C + A + P]`` table and the guide's
    table of the same pairs (``Scores.guide``, computed without gradients); then
    ``MarginFilter(margin, margin_mode, source="guide")`` and ``steps`` shrink the valid mask, and the loss is
    the cross-entropy of ``scores / temperature``. With ``margin=0`` and ``"absolute"`` a candidate is dropped
    when the guide scores it above the positive.

    Args:
        guide: a loaded :class:`~embedkit.encoders.Encoder`, or a model name or folder for
            :func:`~embedkit.encoders.load_encoder`; it is frozen and always runs in eval mode and in its own
            precision.
        temperature: divides the cosine similarities; ``0.01`` as sentence-transformers.
        margin: the margin of the guide filter.
        margin_mode: ``"absolute"`` (drop ``g > g+ - margin``) or ``"relative"`` (drop ``g > g+ (1 - margin)``).
        contrast_anchors: add the anchor-anchor block.
        contrast_positives: add the positive-positive block.
        steps: further filter steps, after the guide filter.

    Example:
        >>> objective = GISTEmbedObjective(guide="sentence-transformers/all-MiniLM-L6-v2", margin=0.05)
        >>> value = objective(encoder, text_batch)  # scalar tensor

    Reference: Solatorio, 2024, "GISTEmbed: Guided In-sample Selection of Training Negatives for Text Embedding
    Fine-tuning", arXiv:2402.16829.
    """

    def __init__(
        self,
        guide: Encoder | str | os.PathLike[str] | None = None,
        temperature: float = 0.01,
        margin: float = 0.0,
        margin_mode: MarginMode = "absolute",
        contrast_anchors: bool = True,
        contrast_positives: bool = True,
        steps: Sequence[Step] = (MaskDuplicates(),),
    ) -> None:
        super().__init__()
        # Cheap checks first: loading the guide takes seconds.
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        guide_filter = MarginFilter(margin, margin_mode, source="guide")
        if guide is None:
            raise ConfigError("GISTEmbed needs a guide model: set the loss parameter guide to a model name or folder")
        self.guide = guide if isinstance(guide, Encoder) else load_guide(guide)
        self.guide.requires_grad_(False)
        self.guide.eval()
        self.temperature = temperature
        self.contrast_anchors = contrast_anchors
        self.contrast_positives = contrast_positives
        self.steps = (guide_filter, *steps)

    def train(self, mode: bool = True) -> GISTEmbedObjective:
        super().train(mode)
        self.guide.eval()  # the guide's scores must not depend on dropout
        return self

    def scores(self, embedded: EmbeddedBatch, guided: EmbeddedBatch) -> Scores:
        """The filtered table: ``embedded`` from the trained model, ``guided`` the same batch from the guide."""
        scores = gist_scores(embedded, self.contrast_anchors, self.contrast_positives)
        guide = gist_scores(guided, self.contrast_anchors, self.contrast_positives).values
        return apply_steps(scores.replace(guide=guide.to(scores.values.device)), self.steps)

    def guide_embeddings(self, batch: TextBatch) -> EmbeddedBatch:
        """The guide's embeddings of ``batch`` (no gradients; gathered under ``torchrun`` like the model's)."""
        with torch.no_grad(), _own_precision(self.guide):
            return embed_batch(self.guide, batch)

    def guided_loss(self, embedded: EmbeddedBatch, guided: EmbeddedBatch) -> Tensor:
        """The loss of the model's embeddings ``embedded`` of a batch whose guide embeddings are ``guided``."""
        return info_nce_from_scores(self.scores(embedded, guided), self.temperature)

    def forward(self, encoder: Encoder, batch: TextBatch) -> Tensor:
        return self.guided_loss(embed_batch(encoder, batch), self.guide_embeddings(batch))

    def extra_repr(self) -> str:
        return (
            f"guide={self.guide.name!r}, temperature={self.temperature}, "
            f"contrast_anchors={self.contrast_anchors}, contrast_positives={self.contrast_positives}"
        )


LOSSES.register(
    "gist",
    LossSpec(
        name="gist",
        factory=with_filters(GISTEmbedObjective),
        summary="GISTEmbed: InfoNCE over batch, anchor and positive candidates; a frozen guide drops false negatives",
        kinds=(Kind.PAIRS, Kind.TRIPLETS, Kind.PREFERENCE),
        reference="Solatorio, 2024, GISTEmbed: Guided In-sample Selection of Training Negatives for Text "
        "Embedding Fine-tuning",
    ),
)
