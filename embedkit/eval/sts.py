"""Semantic textual similarity: Spearman correlation (x100) of cosine similarity with gold scores.

SentEval style: each file is scored as one set (not averaged over its sub-genres), and a folder of files
reports every file and their mean.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from embedkit.data import Kind, read_examples
from embedkit.errors import DataError
from embedkit.eval.scale import SCORE_SCALE
from embedkit.progress import stage
from embedkit.types import Example, SupportsEncode

STS_SUFFIXES = (".jsonl", ".jsonl.gz", ".csv", ".tsv", ".parquet", ".json")


def sts_spearman(embeddings1: np.ndarray, embeddings2: np.ndarray, gold: np.ndarray) -> float:
    """Spearman x100 of row-wise cosine similarity ``[n, D], [n, D]`` against ``[n]`` gold scores."""
    from scipy.stats import spearmanr  # here: the CLI reads this package's names without loading scipy

    a = embeddings1 / np.maximum(np.linalg.norm(embeddings1, axis=1, keepdims=True), 1e-12)
    b = embeddings2 / np.maximum(np.linalg.norm(embeddings2, axis=1, keepdims=True), 1e-12)
    cosine = (a * b).sum(axis=1)
    return float(spearmanr(cosine, gold).statistic * 100)


def check_sts_set(examples: Sequence[Example], path: str) -> None:
    """Refuse a set that Spearman correlation cannot score: fewer than two pairs, or gold scores all equal (the
    correlation with a constant is undefined, so it would come out as NaN)."""
    if len(examples) < 2:
        raise DataError("an STS set needs at least 2 scored pairs", path)
    scores = {example.score for example in examples}
    if len(scores) == 1:
        raise DataError(
            f"every gold score is {scores.pop()}: Spearman correlation needs at least two different scores", path
        )


def sts_files(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` itself, or the STS files of a folder in name order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(STS_SUFFIXES))
        if not files:
            raise DataError(f"no STS files ({', '.join(STS_SUFFIXES)}) in the folder", str(path))
        return files
    if not path.exists():
        raise DataError("file not found", str(path))
    return [path]


@dataclass
class STSEvaluator:
    """``evaluator(encoder) -> {"spearman": ...}`` on one file; on a folder of several, ``{"<file>/spearman": ...,
    "spearman": their mean}``, each file named by its name up to the first dot. The primary metric is ``spearman``.

    Args:
        path: a scored file (``sentence1``, ``sentence2``, ``score``) or a folder of them.
        columns: optional column remapping, as for :func:`embedkit.read_examples`.
        batch_size: encoding batch size.
    """

    path: str | os.PathLike[str]
    columns: dict[str, str] | None = None
    batch_size: int = 64
    primary_metric: str = "spearman"
    higher_is_better: bool = field(default=True, init=False)
    score_scale: ClassVar[int] = SCORE_SCALE

    def __post_init__(self) -> None:
        self.sets: dict[str, list[Example]] = {}
        for file in sts_files(self.path):
            examples = read_examples(file, kind=Kind.SCORED, columns=self.columns)
            check_sts_set(examples, str(file))
            self.sets[file.name.split(".")[0]] = examples

    def __call__(self, encoder: SupportsEncode) -> dict[str, float]:
        results: dict[str, float] = {}
        for name, examples in self.sets.items():
            texts = sorted({t for e in examples for t in (e.anchor, e.positive)})
            with stage("sts"):
                vectors = encoder.encode(texts, batch_size=self.batch_size)
            row = {text: i for i, text in enumerate(texts)}
            first = vectors[[row[e.anchor] for e in examples]]
            second = vectors[[row[e.positive] for e in examples]]
            gold = np.array([e.score for e in examples], dtype=np.float64)
            results[f"{name}/spearman"] = sts_spearman(first, second, gold)
        mean = float(np.mean(list(results.values())))
        # one file's score is the mean itself: one name for it, not two
        return {"spearman": mean} if len(results) == 1 else {**results, "spearman": mean}
