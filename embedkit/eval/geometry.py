"""Embedding geometry: alignment and uniformity (Wang and Isola, 2020) and anisotropy.

On L2-normalised embeddings ``f``:

- ``alignment = E_{(x, y) ~ positive pairs} ||f(x) - f(y)||^2`` (``alpha = 2``): how close positives sit; lower
  is better.
- ``uniformity = log E_{x, y ~ sentences} exp(-t ||f(x) - f(y)||^2)`` (``t = 2``): how evenly the sentences
  spread over the sphere; lower (more negative) is better.
- ``anisotropy``: the mean cosine similarity of two different sentences. Near 0 is isotropic; pre-trained
  encoders without contrastive training sit far above it (Ethayarajh, 2019).

As in SimCSE (Gao et al., 2021), the default data is an STS file: its pairs scored at least 4 (of 5) are the
positive pairs and all its sentences the sample, so one file gives all three numbers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from embedkit.data import Kind, read_examples
from embedkit.errors import ConfigError, DataError
from embedkit.eval.scale import SCORE_SCALE
from embedkit.progress import stage
from embedkit.types import SupportsEncode

ALIGNMENT_ALPHA = 2.0
UNIFORMITY_T = 2.0


def _unit(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def alignment(embeddings1: np.ndarray, embeddings2: np.ndarray, alpha: float = ALIGNMENT_ALPHA) -> float:
    """Mean ``||f(x) - f(y)||^alpha`` over row-aligned positive pairs ``[n, D], [n, D]`` (normalised here)."""
    distances = np.linalg.norm(_unit(embeddings1) - _unit(embeddings2), axis=1)
    return float(np.mean(distances**alpha))


def uniformity(embeddings: np.ndarray, t: float = UNIFORMITY_T) -> float:
    """``log`` of the mean Gaussian potential ``exp(-t ||f(x) - f(y)||^2)`` over all pairs of distinct rows.

    Computed with a log-sum-exp so that well-spread embeddings (tiny potentials) do not underflow.
    """
    from scipy.spatial.distance import pdist  # here: the CLI reads this package's names without loading scipy
    from scipy.special import logsumexp

    squared = pdist(_unit(embeddings), metric="sqeuclidean")
    return float(logsumexp(-t * squared) - math.log(squared.size))


def anisotropy(embeddings: np.ndarray) -> float:
    """Mean cosine similarity over all pairs of distinct rows ``[n, D]``."""
    from scipy.spatial.distance import pdist

    return float(np.mean(1.0 - pdist(_unit(embeddings), metric="cosine")))


@dataclass
class GeometryEvaluator:
    """``evaluator(encoder) -> {"alignment", "uniformity", "anisotropy"}``.

    Usable as :func:`embedkit.fit`'s evaluator inside a :class:`~embedkit.eval.CombinedEvaluator` (after an STS
    evaluator, whose metric then picks the best model) so that the geometry is logged at every evaluation. Alone,
    note that ``fit`` keeps the *highest* primary metric, whereas lower uniformity is better
    (:attr:`higher_is_better` says so).

    Args:
        pairs: a scored file (``sentence1``, ``sentence2``, ``score``), whose pairs scored at least
            ``positive_threshold`` are the positives, or a pairs file (``anchor``, ``positive``), all positives.
        sentences: a file of sentences for uniformity and anisotropy (one per line, or a ``text`` column);
            default: every distinct sentence of ``pairs``.
        positive_threshold: the lowest gold score of a positive pair in a scored file.
        max_sentences: sentences sampled (with ``seed``) for uniformity and anisotropy; all pairs of them are used.
        batch_size: encoding batch size.
        seed: seed of the sentence sample.
    """

    pairs: str | os.PathLike[str]
    sentences: str | os.PathLike[str] | None = None
    positive_threshold: float = 4.0
    max_sentences: int = 2000
    batch_size: int = 64
    seed: int = 0
    primary_metric: str = "uniformity"
    higher_is_better: bool = field(default=False, init=False)
    score_scale: ClassVar[int] = SCORE_SCALE

    def __post_init__(self) -> None:
        if self.max_sentences < 2:
            raise ConfigError(f"max_sentences must be at least 2, got {self.max_sentences}")
        examples = read_examples(self.pairs)
        if examples.kind == Kind.SCORED:
            positives = [e for e in examples if e.score is not None and e.score >= self.positive_threshold]
        elif examples.kind in (Kind.PAIRS, Kind.TRIPLETS, Kind.PREFERENCE):
            positives = list(examples)
        else:
            raise DataError(f"geometry needs scored or pairs data, got {examples.kind.value}", str(self.pairs))
        if not positives:
            raise DataError(f"no positive pairs (no pair scored at least {self.positive_threshold})", str(self.pairs))
        self.positive_pairs = [(e.anchor, e.positive) for e in positives]
        if self.sentences is None:
            texts = sorted({t for e in examples for t in (e.anchor, e.positive)})
            source = str(self.pairs)
        else:
            texts = sorted({e.anchor for e in read_examples(self.sentences, kind=Kind.SENTENCES)})
            source = str(self.sentences)
        if len(texts) < 2:
            raise DataError("uniformity needs at least 2 distinct sentences", source)
        if len(texts) > self.max_sentences:
            rng = np.random.default_rng(self.seed)
            texts = [texts[i] for i in sorted(rng.choice(len(texts), self.max_sentences, replace=False))]
        self.sample = texts

    def __call__(self, encoder: SupportsEncode) -> dict[str, float]:
        firsts = [a for a, _ in self.positive_pairs]
        seconds = [b for _, b in self.positive_pairs]
        texts = sorted({*firsts, *seconds, *self.sample})
        with stage("geometry"):
            vectors = encoder.encode(texts, batch_size=self.batch_size)
        row = {text: i for i, text in enumerate(texts)}
        sample = vectors[[row[t] for t in self.sample]]
        return {
            "alignment": alignment(vectors[[row[t] for t in firsts]], vectors[[row[t] for t in seconds]]),
            "uniformity": uniformity(sample),
            "anisotropy": anisotropy(sample),
        }
