"""Preference evaluation: how often a model ranks the chosen reply above the rejected one, and how well calibrated.

Two modes, one report:

- ``"similarity"``: an embedding model prefers the reply closer to the prompt, ``s = cos(prompt, reply)``.
  As a probability, ``P(chosen preferred) = sigmoid((s_c - s_r) / temperature)``: exactly the two-candidate
  softmax an InfoNCE model with that temperature is trained to output.
- ``"reward"``: a reward model scores ``(prompt, reply)``, and ``P(chosen preferred) = sigmoid(r_c - r_r)``, its
  Bradley-Terry probability.

Metrics (accuracy, ECE and the reliability bins in percent, as STS reports Spearman x100; see
:mod:`embedkit.eval.scale`):

- ``accuracy``: share of rows with ``score(chosen) > score(rejected)``; a tie counts one half (a model that
  cannot tell the replies apart scores 50, not 0), with a 95% Wilson score interval
  (``accuracy_low``, ``accuracy_high``; Wilson, 1927);
- ``mean_margin``: mean of ``score(chosen) - score(rejected)`` (cosine or reward units);
- ``ece``: expected calibration error of the pairwise decision (Guo et al., 2017): each row predicts the
  reply with ``P > 0.5`` with confidence ``max(P, 1 - P)``; rows are put into ``n_bins`` equal-width confidence
  bins over ``[0.5, 1]`` and ``ece = sum_b n_b / n * |accuracy_b - confidence_b|``; the bins are the
  reliability diagram;
- ``log_loss``: mean ``-log P(chosen preferred)``, the Bradley-Terry loss on the evaluation set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import numpy as np

from embedkit.data import Kind, read_examples
from embedkit.data.render import render_pairs, tokenizer_of
from embedkit.errors import ConfigError, EmbedkitError
from embedkit.eval.scale import SCORE_SCALE
from embedkit.progress import stage
from embedkit.types import JsonValue, SupportsEncode, TextEncoder

if TYPE_CHECKING:  # imported where used: the CLI reads MODES without loading torch
    from embedkit.encoders.reward import RewardHead

MODES = ("similarity", "reward")
PROMPT_TRUNCATION = ("left", "right")
Z_95 = 1.959963984540054  # two-sided 95% standard normal quantile


@runtime_checkable
class RewardScorer(Protocol):
    """What reward-mode evaluation needs: ``score(prompts, responses) -> [n]`` float32 rewards. Both kinds of
    :func:`~embedkit.encoders.reward.load_reward_model` satisfy it."""

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> np.ndarray: ...


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin of the reliability diagram, in percent: its bounds, and the mean ``confidence`` and the
    ``accuracy`` of its rows (``None`` for a bin without rows)."""

    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None


@dataclass(frozen=True)
class PreferenceReport:
    """The results of one preference evaluation; :meth:`metrics` are the evaluator's floats."""

    mode: str
    n: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    ties: int
    mean_margin: float
    ece: float
    log_loss: float
    bins: tuple[ReliabilityBin, ...]

    def metrics(self) -> dict[str, float]:
        """The scores and the counts ``ties`` and ``n``, which stay integers."""
        scores = {name: float(getattr(self, name)) for name in
                  ("accuracy", "accuracy_low", "accuracy_high", "mean_margin", "ece", "log_loss")}
        return {**scores, "ties": self.ties, "n": self.n}

    def to_dict(self) -> dict[str, JsonValue]:
        return asdict(self)


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` of a proportion ``successes / n``, in ``[0, 1]``."""
    if n <= 0:
        raise ValueError("a proportion needs n >= 1")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def preference_report(
    chosen: np.ndarray, rejected: np.ndarray, mode: str, scale: float = 1.0, n_bins: int = 10
) -> PreferenceReport:
    """The report of ``[n]`` chosen and ``[n]`` rejected scores; ``P = sigmoid((chosen - rejected) / scale)``."""
    margin = np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64)
    n = margin.shape[0]
    if n == 0:
        raise ValueError("no rows to evaluate")
    correct = np.where(margin > 0, 1.0, np.where(margin < 0, 0.0, 0.5))
    logit = margin / scale
    probability = 1 / (1 + np.exp(-logit))
    confidence = np.maximum(probability, 1 - probability)
    # equal-width bins over [0.5, 1]; a confidence of exactly 1 belongs to the last bin
    index = np.minimum(((confidence - 0.5) * 2 * n_bins).astype(int), n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        lower, upper = 0.5 + b / (2 * n_bins), 0.5 + (b + 1) / (2 * n_bins)
        bin_confidence = bin_accuracy = None  # JSON has no NaN: an empty bin has neither
        if count:
            bin_confidence, bin_accuracy = float(confidence[members].mean()), float(correct[members].mean())
            ece += count / n * abs(bin_accuracy - bin_confidence)
            bin_confidence, bin_accuracy = 100 * bin_confidence, 100 * bin_accuracy
        bins.append(ReliabilityBin(100 * lower, 100 * upper, count, bin_confidence, bin_accuracy))
    low, high = wilson_interval(float(correct.sum()), n)
    return PreferenceReport(
        mode=mode,
        n=n,
        accuracy=100 * float(correct.mean()),
        accuracy_low=100 * low,
        accuracy_high=100 * high,
        ties=int((margin == 0).sum()),
        mean_margin=float(margin.mean()),
        ece=100 * ece,
        log_loss=float(np.logaddexp(0, -logit).mean()),  # -log sigmoid(x), stable for large |x|
        bins=tuple(bins),
    )


@dataclass
class PreferenceEvaluator:
    """``evaluator(model) -> metrics`` on a preference file; the primary metric is ``accuracy`` (percent).

    Args:
        path: a preference file (``prompt``, ``chosen``, ``rejected``), in any format :func:`read_examples` reads.
        mode: ``"similarity"`` (an encoder: cosine of prompt and reply) or ``"reward"`` (a model with
            ``score(prompts, responses)``, or an encoder together with ``reward_head``).
        columns: optional column remapping.
        batch_size: encoding batch size.
        temperature: similarity mode: the temperature that turns cosine gaps into probabilities.
        prompt_truncation: similarity mode: ``"left"`` keeps the end of a long prompt (the latest turns, as
            :func:`embedkit.data.render_pair` does); ``"right"`` leaves the prompt to the encoder, which keeps
            its beginning (the protocol of the DESIGN.md zero-shot reference number).
        reward_head: reward mode: the head to score an encoder's representations with, for evaluating a model
            while it trains (:attr:`RewardModelObjective.head`).
        n_bins: reliability bins.
        limit: read at most this many rows.
    """

    path: str | os.PathLike[str]
    mode: str = "similarity"
    columns: dict[str, str] | None = None
    batch_size: int = 64
    temperature: float = 0.05
    prompt_truncation: str = "left"
    reward_head: RewardHead | None = None
    n_bins: int = 10
    limit: int | None = None
    primary_metric: str = "accuracy"
    higher_is_better: bool = field(default=True, init=False)
    score_scale: ClassVar[int] = SCORE_SCALE

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown preference evaluation mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.prompt_truncation not in PROMPT_TRUNCATION:
            raise ConfigError(
                f"unknown prompt truncation {self.prompt_truncation!r}; valid: {', '.join(PROMPT_TRUNCATION)}"
            )
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        examples = read_examples(self.path, kind=Kind.PREFERENCE, columns=self.columns, limit=self.limit)
        self.prompts = [example.anchor for example in examples]
        self.chosen = [example.positive for example in examples]
        self.rejected = [example.negatives[0] for example in examples]

    def __call__(self, model: SupportsEncode | RewardScorer) -> dict[str, float]:
        return self.report(model).metrics()

    def report(self, model: SupportsEncode | RewardScorer) -> PreferenceReport:
        """The full report, reliability bins included."""
        if self.mode == "similarity":
            if not isinstance(model, SupportsEncode):
                raise EmbedkitError(
                    f"similarity-mode evaluation needs an encoder, but {_name(model)} has no encode(); "
                    "use mode='reward' for a reward model"
                )
            chosen, rejected = self._similarities(model)
            return preference_report(chosen, rejected, self.mode, scale=self.temperature, n_bins=self.n_bins)
        scorer = self._scorer(model)
        chosen = scorer.score(self.prompts, self.chosen, batch_size=self.batch_size)
        rejected = scorer.score(self.prompts, self.rejected, batch_size=self.batch_size)
        return preference_report(chosen, rejected, self.mode, n_bins=self.n_bins)

    def _similarities(self, encoder: SupportsEncode) -> tuple[np.ndarray, np.ndarray]:
        prompts = self.prompts
        if self.prompt_truncation == "left":
            if not isinstance(encoder, TextEncoder):
                raise ConfigError(
                    f"prompt_truncation='left' cuts prompts with the encoder's tokenizer, which {_name(encoder)} "
                    "does not expose; use prompt_truncation='right'"
                )
            prompts = render_pairs(tokenizer_of(encoder), prompts, [""] * len(prompts), encoder.max_seq_length)
        texts = sorted({*prompts, *self.chosen, *self.rejected})  # each distinct text is encoded once
        row = {text: i for i, text in enumerate(texts)}
        with stage("preference"):
            vectors = np.asarray(encoder.encode(texts, batch_size=self.batch_size), dtype=np.float64)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

        def cosine(replies: list[str]) -> np.ndarray:
            return np.einsum("nd,nd->n", vectors[[row[p] for p in prompts]], vectors[[row[r] for r in replies]])

        return cosine(self.chosen), cosine(self.rejected)

    def _scorer(self, model: SupportsEncode | RewardScorer) -> RewardScorer:
        from embedkit.encoders import Encoder
        from embedkit.encoders.reward import RewardModel

        if isinstance(model, RewardScorer):
            return model
        if self.reward_head is not None and isinstance(model, Encoder):
            return RewardModel(model, self.reward_head)
        raise EmbedkitError(
            f"reward-mode evaluation needs a reward model, but {_name(model)} has no reward head; load one with "
            "load_reward_model(), pass reward_head= with an encoder, or use mode='similarity'"
        )


def _name(model: object) -> str:
    """What to call a model in a message: the name it was loaded from, else its class."""
    name = getattr(model, "name", None)
    return name if isinstance(name, str) else type(model).__name__
