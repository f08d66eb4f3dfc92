"""Choosing which response pairs to send for preference labels, by response-embedding similarity.

REAL ("Response Embedding-based Alignment for LLMs", Zhang, Zhao, Molybog and Zhang, 2024, arXiv:2409.17169)
samples several responses per prompt, embeds each response independently of the prompt, and picks the pairs
to label by the cosine similarity of their embeddings. Its finding on SHP2 and HH-RLHF: the least similar
pairs are the least ambiguous to label, carry fewer label errors and align a model (DPO) better than random
pairs, while the most similar pairs are the hardest and noisiest. So ``"dissimilar"`` is the recommended
strategy, and ``"similar"`` and ``"random"`` are the baselines it was compared with.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np

from embedkit.data.io import read_rows
from embedkit.errors import ConfigError, DataError
from embedkit.types import SupportsEncode

Strategy = Literal["dissimilar", "similar", "random"]
STRATEGIES = ("dissimilar", "similar", "random")


class SelectedPair(NamedTuple):
    """A pair of responses to one prompt, chosen for labelling; ``similarity`` is their embedding cosine."""

    prompt: str
    a: str
    b: str
    similarity: float


def select_pairs(
    encoder: SupportsEncode,
    prompt_to_responses: Mapping[str, Sequence[str]],
    strategy: Strategy = "dissimilar",
    per_prompt: int = 1,
    seed: int = 0,
    batch_size: int = 64,
) -> list[SelectedPair]:
    """Pick ``per_prompt`` response pairs for each prompt.

    All responses are embedded in one :meth:`encode` call; a prompt's candidate pairs are its pairs of
    distinct response texts (identical texts tell a labeller nothing). ``"dissimilar"`` takes the pairs of
    lowest cosine similarity, ``"similar"`` the highest, ``"random"`` a uniform sample (seeded, per prompt in
    input order). Ties break by response order, so the result is deterministic.

    Args:
        encoder: anything with ``encode(texts, batch_size=...) -> [n, D]``.
        prompt_to_responses: each prompt's responses, at least 2 distinct ones per prompt.
        strategy: ``"dissimilar"`` (REAL's choice), ``"similar"`` or ``"random"``.
        per_prompt: pairs per prompt; a prompt with fewer distinct pairs gives all it has.
        seed: seed of the ``"random"`` strategy.
        batch_size: encoding batch size.

    Returns:
        The pairs, prompt by prompt in input order; ``a`` comes before ``b`` in the prompt's response list.

    Raises:
        ConfigError: unknown strategy or ``per_prompt < 1``.
        DataError: a prompt with fewer than 2 distinct responses (the message names the prompt).
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown pair selection strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if per_prompt < 1:
        raise ConfigError(f"per_prompt must be at least 1, got {per_prompt}")
    groups = {prompt: list(dict.fromkeys(responses)) for prompt, responses in prompt_to_responses.items()}
    for prompt, responses in groups.items():
        if len(responses) < 2:
            raise DataError(f"prompt {_preview(prompt)!r} has {len(responses)} distinct responses; a pair needs 2")
    texts = sorted({text for responses in groups.values() for text in responses})
    row = {text: i for i, text in enumerate(texts)}
    vectors = np.asarray(encoder.encode(texts, batch_size=batch_size), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    rng = random.Random(seed)
    selected = []
    for prompt, responses in groups.items():
        pairs = list(itertools.combinations(range(len(responses)), 2))
        cosine = [float(vectors[row[responses[i]]] @ vectors[row[responses[j]]]) for i, j in pairs]
        if strategy == "random":
            order = rng.sample(range(len(pairs)), min(per_prompt, len(pairs)))
        else:
            sign = 1.0 if strategy == "dissimilar" else -1.0
            order = sorted(range(len(pairs)), key=lambda k: (sign * cosine[k], k))[:per_prompt]
        for k in order:
            i, j = pairs[k]
            selected.append(SelectedPair(prompt, responses[i], responses[j], cosine[k]))
    return selected


def read_response_groups(path: str | os.PathLike[str], format: str | None = None) -> dict[str, list[str]]:
    """``prompt -> responses`` from rows ``{"prompt": str, "responses": [str, ...]}`` (jsonl, json, parquet, ...).

    Raises:
        DataError: a missing or non-string prompt, ``responses`` that is not a list of strings, fewer than 2
            distinct responses, or a prompt repeated on another row; the message names file and line.
    """
    name = str(path)
    groups: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for line, row in read_rows(path, format=format):
        prompt, responses = row.get("prompt"), row.get("responses")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError("column 'prompt' must be a non-empty string", name, line)
        if not isinstance(responses, list) or not all(isinstance(text, str) for text in responses):
            raise DataError("column 'responses' must be a list of strings", name, line)
        distinct = list(dict.fromkeys(responses))
        if len(distinct) < 2:
            raise DataError(f"{len(distinct)} distinct responses; choosing a pair needs at least 2", name, line)
        if prompt in groups:
            raise DataError(f"the prompt of line {first_line[prompt]} is repeated; give all its responses on one row",
                            name, line)
        groups[prompt], first_line[prompt] = distinct, line
    if not groups:
        raise DataError("no rows", name)
    return groups


def _preview(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
