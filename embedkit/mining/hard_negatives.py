"""Hard-negative mining: index search -> a :class:`~embedkit.types.Scores` table -> the in-batch filter steps.

For each (anchor, positive) pair the anchor's nearest corpus documents are retrieved, and each pair becomes a
row of a score table whose target column is the positive (scored by the same encoder) and whose other
columns are the retrieved candidates. The table then goes through the very step classes of
:mod:`embedkit.losses.steps` that filter in-batch negatives during training (DESIGN.md, principle 2), named by
the same step tables a recipe's ``filters`` list uses:

1. :class:`~embedkit.losses.steps.MaskDuplicates`, always first: never the anchor's or the positive's own text,
   nor any other known positive of the anchor (candidates that are a known positive share the positive's
   group id);
2. the caller's ``steps``, in order; by default (:data:`DEFAULT_STEPS`) a relative margin of 0.05 against the
   positive's score, then the rank window 10:100 of what is left (0 = hardest);
3. ``sampling="top"``: :class:`~embedkit.losses.steps.TopKHardest` keeps the ``num_negatives`` hardest;
   ``"random"``: a seeded uniform sample of ``num_negatives`` of what is left.

With a ``guide`` encoder (GISTEmbed), a step that reads a score source (``margin``, ``ceiling``) and names
none judges the guide's similarities of the same pairs instead of the mined model's (``source="guide"``);
ranks still follow the mined model. Steps run in the order given, so a margin listed before the rank window
acts as in sentence-transformers' ``mine_hard_negatives``: the window counts the candidates the margin left.

A ``bm25`` or ``hybrid`` index (BM25 negatives, as in DPR) picks the candidates by its own scores, and the mined
model then scores them: the steps compare the model's similarities, so margins and rank windows mean what they
mean for a dense index, over a lexically chosen pool.

Anchors are embedded as queries and positives and the corpus as documents, each after the model's prompt for
its role (:mod:`embedkit.encoders.prompts`; an index given records its document prompt, and BM25 reads the texts
without prompts); a guide embeds them after its own prompts.

Each row of the score table has its own candidates, while a :class:`Scores` table shares its ``C`` columns
among rows; so ``R`` rows are laid out block-diagonally, ``C = R * (1 + K)``: row ``r``'s positive sits at
column ``r (1 + K)`` followed by its ``K`` candidates, and every column outside the row's block is invalid.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from embedkit.data import Examples
from embedkit.data.collate import text_id
from embedkit.encoders.prompts import DOCUMENT, QUERY, resolve_prompt
from embedkit.errors import ConfigError, DataError
from embedkit.index import Corpus, Index, as_corpus, build_index
from embedkit.index.spec import TextBackend
from embedkit.losses.steps import (
    FilterSpec,
    MaskDuplicates,
    RankWindow,
    Step,
    TopKHardest,
    apply_steps,
    build_steps,
)
from embedkit.progress import progress_bar
from embedkit.types import Example, Kind, Scores, TextEncoder

SAMPLING = ("top", "random")
DEFAULT_STEPS: tuple[FilterSpec, ...] = (
    MappingProxyType({"name": "margin", "margin": 0.05, "mode": "relative"}),
    MappingProxyType({"name": "rank-window", "start": 10, "end": 100}),
)
"""Mining's filters unless told otherwise: drop candidates above 95% of the positive's score (likely unlabelled
positives), then keep ranks 10 to 100 of the rest; read-only, as a default argument is shared by every call."""
SEARCH_HEADROOM = 20
"""Candidates searched per wanted negative when no rank window ends the search: 100 for the default 5
negatives, as deep as the default window."""
ROWS_PER_TABLE = 64
"""Pairs per score table; the block-diagonal table has ``64 * 64 * (1 + K)`` entries."""


class MiningWarning(UserWarning):
    """Some pairs found fewer negatives than asked for and were left out."""


@dataclass(frozen=True)
class Candidates:
    """What the filter steps left of each pair's retrieved candidates.

    Attributes:
        internal: ``[P, K]`` int64 internal ids of the retrieved candidates of each pair's anchor, best first
            (``-1``: fewer than ``K`` documents).
        scores: ``[P, K]`` float32 their scores under the mined model.
        kept: ``[P, K]`` bool, the candidates that passed every step.
    """

    internal: np.ndarray
    scores: np.ndarray
    kept: np.ndarray


def mining_steps(specs: Sequence[FilterSpec], *, guided: bool, top_k: int | None = None) -> tuple[Step, ...]:
    """The steps of a mining run, in order (see the module docs).

    Args:
        specs: step tables (``{"name": "margin", "margin": 0.05, "mode": "relative"}``, ...), checked by
            :func:`~embedkit.losses.steps.build_steps`.
        guided: a guide model scores the pairs: steps that read a score source and name none read the guide's.
        top_k: adds :class:`TopKHardest` last (``sampling="top"``), or ``None``.
    """
    chosen = build_steps(specs, default_source="guide" if guided else "values")
    hardest = (TopKHardest(top_k),) if top_k is not None else ()
    return (MaskDuplicates(), *chosen, *hardest)


def _rank_window(steps: Sequence[Step]) -> RankWindow | None:
    """The one rank window of ``steps``, or ``None``.

    Two windows are refused: the second would count ranks among the first's survivors, so no single search
    depth follows from them, and one window says the same.
    """
    windows = [step for step in steps if isinstance(step, RankWindow)]
    if len(windows) > 1:
        raise ConfigError(f"mining takes at most one rank-window step, got {len(windows)}: {windows}")
    return windows[0] if windows else None


def _check_room(steps: Sequence[Step], num_negatives: int) -> None:
    """Refuse steps that can never leave ``num_negatives`` negatives: every pair would be left out."""
    for step in steps:
        if isinstance(step, RankWindow) and step.end is not None and num_negatives > step.end - step.start:
            raise ConfigError(f"cannot keep {num_negatives} negatives from the rank window {step.start}:{step.end}")
        if isinstance(step, TopKHardest) and num_negatives > step.k:
            raise ConfigError(f"cannot keep {num_negatives} negatives after a top-k of {step.k}")


def search_depth(window: RankWindow | None, num_negatives: int, most_positives: int) -> int:
    """Candidates to retrieve per anchor.

    A window's end says how deep the ranks go; without one (no window, or an open ``end``) the search goes
    :data:`SEARCH_HEADROOM` candidates per negative past the window's start, because the filters mostly drop
    the top candidates. Either way the depth adds room for what duplicate masking removes: the anchor's own
    text and its ``most_positives`` known positives.
    """
    if window is not None and window.end is not None:
        reach = window.end
    else:
        reach = (0 if window is None else window.start) + SEARCH_HEADROOM * num_negatives
    return reach + most_positives + 1


def candidate_table(
    positive_scores: Tensor,
    candidate_scores: Tensor,
    anchor_groups: Tensor,
    positive_groups: Tensor,
    candidate_groups: Tensor,
    candidate_valid: Tensor,
    guide_positive_scores: Tensor | None = None,
    guide_candidate_scores: Tensor | None = None,
) -> Scores:
    """A block-diagonal score table of ``R`` rows with ``K`` candidates each (see the module docs).

    Args:
        positive_scores: ``[R]`` score of each row's positive.
        candidate_scores: ``[R, K]`` scores of each row's candidates.
        anchor_groups: ``[R]`` text ids of the anchors.
        positive_groups: ``[R]`` text ids of the positives.
        candidate_groups: ``[R, K]`` text ids of the candidates (a known positive carries the positive's id).
        candidate_valid: ``[R, K]`` bool, false for empty result slots.
        guide_positive_scores: ``[R]`` the guide's scores of the positives, or ``None``.
        guide_candidate_scores: ``[R, K]`` the guide's scores of the candidates, or ``None``.

    Returns:
        A :class:`Scores` of shape ``[R, R * (1 + K)]`` whose row ``r`` has its target at column ``r * (1 + K)``.
    """
    rows, width = candidate_scores.shape[0], candidate_scores.shape[1] + 1
    diagonal = torch.arange(rows)

    def blocks(own: Tensor, fill: float | bool) -> Tensor:
        table = torch.full((rows, rows, width), fill, dtype=own.dtype)
        table[diagonal, diagonal] = own
        return table.reshape(rows, rows * width)

    values = blocks(torch.cat([positive_scores[:, None], candidate_scores], dim=1), float("-inf"))
    valid = blocks(torch.cat([torch.ones(rows, 1, dtype=torch.bool), candidate_valid], dim=1), False)
    guide = None
    if guide_positive_scores is not None and guide_candidate_scores is not None:
        guide = blocks(torch.cat([guide_positive_scores[:, None], guide_candidate_scores], dim=1), float("-inf"))
    return Scores(
        values=values,
        targets=diagonal * width,
        valid=valid,
        log_weights=torch.zeros_like(values),
        anchor_groups=anchor_groups,
        candidate_groups=torch.cat([positive_groups[:, None], candidate_groups], dim=1).reshape(-1),
        guide=guide,
    )


def _own_block(table: Tensor, width: int) -> Tensor:
    """``[R, R * width] -> [R, width - 1]``: each row's own candidate columns (without the positive)."""
    rows = table.shape[0]
    diagonal = torch.arange(rows)
    return table.reshape(rows, rows, width)[diagonal, diagonal][:, 1:]


def _pairs(pairs: Sequence[Any]) -> list[Example]:
    """``pairs`` as examples: :class:`Examples` of kind pairs or triplets, examples, or (anchor, positive)."""
    kind = getattr(pairs, "kind", None)
    if kind is not None and kind not in (Kind.PAIRS, Kind.TRIPLETS):
        raise DataError(f"mining needs (anchor, positive) pairs; got examples of kind {Kind(kind).value!r}")
    rows = []
    for position, pair in enumerate(pairs):
        if isinstance(pair, Example):
            rows.append(pair)
        elif isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(text, str) for text in pair):
            rows.append(Example(anchor=pair[0], positive=pair[1]))
        else:
            raise DataError(
                f"pair {position}: expected an Example or an (anchor, positive) tuple of texts, got {pair!r:.80}"
            )
    if not rows:
        raise DataError("no pairs to mine negatives for")
    return rows


Embed = Callable[[list[str], str], np.ndarray]
"""``(texts, prompt) -> [n, D]`` embeddings of ``texts``, each after ``prompt``."""


def _encode(encoder: TextEncoder, texts: list[str], prompt: str, normalize: bool, batch_size: int) -> np.ndarray:
    return encoder.encode(texts, batch_size=batch_size, normalize=normalize, show_progress=None, prompt=prompt)


def filter_candidates(
    encoder: TextEncoder,
    pairs: Sequence[Example | tuple[str, str]],
    index: Index,
    steps: Sequence[Step],
    k: int,
    *,
    guide: TextEncoder | None = None,
    embed: Embed | None = None,
    batch_size: int = 64,
    rows_per_table: int = ROWS_PER_TABLE,
    show_progress: bool | None = None,
) -> Candidates:
    """Retrieve ``k`` candidates per anchor from ``index`` and run each pair's score table through ``steps``.

    Each distinct anchor is embedded once after the encoder's query prompt and each distinct positive once after
    the index's document prompt (the encoder's, for an index that embeds nothing), by ``embed``, which returns
    ``[n, D]`` embeddings as the index stores them (by default ``encoder.encode``); each distinct anchor is searched
    once. See :func:`mine_hard_negatives` for the other arguments.
    """
    rows = _pairs(pairs)
    if index.manifest.metric == "l2":
        raise ConfigError("mining compares similarities; build the index with metric 'cosine' or 'ip', not 'l2'")
    index.check_encoder(encoder)
    if embed is None:
        embed = partial(_encode, encoder, normalize=index.manifest.normalize, batch_size=batch_size)
    anchors = list(dict.fromkeys(row.anchor for row in rows))
    positives = list(dict.fromkeys(row.positive for row in rows))
    anchor_of = {text: i for i, text in enumerate(anchors)}
    positive_of = {text: i for i, text in enumerate(positives)}
    pair_anchor = np.array([anchor_of[row.anchor] for row in rows])
    pair_positive = np.array([positive_of[row.positive] for row in rows])

    document_prompt = index.manifest.document_prompt if index.embeds else resolve_prompt(encoder.prompts, DOCUMENT)
    anchor_vectors = embed(anchors, resolve_prompt(encoder.prompts, QUERY))
    positive_vectors = embed(positives, document_prompt)
    scores, internal = index.search_internal(
        anchors, min(k, max(len(index), 1)), show_progress=show_progress, embeddings=anchor_vectors
    )
    if isinstance(index.backend, TextBackend):
        # BM25 and fused scores are not the model's similarities, which the steps compare with the positive's
        scores, internal = _model_scores(anchor_vectors, internal, index, partial(embed, prompt=document_prompt))
    _, text_ids = index.store.id_arrays()
    groups = text_ids[internal]  # [A, K]
    # a candidate that is a known positive of the anchor takes the group of the row's positive, so that
    # MaskDuplicates drops it as it drops the positive itself
    positive_ids = np.array([text_id(text) for text in positives], dtype=np.int64)
    known = np.zeros(groups.shape, dtype=bool)
    for anchor, positive in {(int(a), int(p)) for a, p in zip(pair_anchor, pair_positive, strict=True)}:
        known[anchor] |= groups[anchor] == positive_ids[positive]
    positive_scores = np.einsum("pd,pd->p", anchor_vectors[pair_anchor], positive_vectors[pair_positive])

    guide_positive = guide_candidates = None
    if guide is not None:
        guide_positive, guide_candidates = _guide_scores(
            guide, anchors, positives, internal, index, pair_anchor, pair_positive, batch_size
        )

    anchor_groups = torch.tensor([text_id(text) for text in anchors], dtype=torch.long)
    kept = np.zeros((len(rows), internal.shape[1]), dtype=bool)
    progress = progress_bar("mining", len(rows), unit="pair", show=show_progress)
    for start in range(0, len(rows), rows_per_table):
        part = slice(start, start + rows_per_table)
        a, p = pair_anchor[part], pair_positive[part]
        row_groups = np.where(known[a], positive_ids[p][:, None], groups[a])
        table = candidate_table(
            positive_scores=torch.from_numpy(positive_scores[part]).float(),
            candidate_scores=torch.from_numpy(scores[a]).float(),
            anchor_groups=anchor_groups[a],
            positive_groups=torch.from_numpy(positive_ids[p]),
            candidate_groups=torch.from_numpy(row_groups),
            candidate_valid=torch.from_numpy(internal[a] >= 0),
            guide_positive_scores=None if guide_positive is None else torch.from_numpy(guide_positive[part]),
            guide_candidate_scores=None if guide_candidates is None else torch.from_numpy(guide_candidates[part]),
        )
        filtered = apply_steps(table, steps)
        kept[part] = _own_block(filtered.valid, internal.shape[1] + 1).numpy()
        progress.update(len(a))
    progress.close()
    return Candidates(internal=internal[pair_anchor], scores=scores[pair_anchor], kept=kept)


def _model_scores(
    anchor_vectors: np.ndarray, internal: np.ndarray, index: Index, embed: Callable[[list[str]], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The mined model's similarities of the candidates that a text index (``bm25``, ``hybrid``) retrieved:
    ``[A, K]`` internal ids -> ``(scores [A, K], ids [A, K])``, each row re-sorted best first as the steps and
    :func:`_choose` expect (empty slots, ``-1``, last with ``-inf``). Only the distinct candidates are embedded."""
    distinct, inverse = np.unique(internal, return_inverse=True)
    present = distinct >= 0
    texts, _ = index.store.payloads(distinct[present])
    vectors = np.zeros((len(distinct), anchor_vectors.shape[1]), dtype=np.float32)
    if present.any():
        vectors[present] = embed([str(text) for text in texts])
    scores = np.einsum("ad,akd->ak", anchor_vectors, vectors[inverse.reshape(internal.shape)]).astype(np.float32)
    scores[internal < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(internal, order, axis=1)


def _guide_scores(
    guide: TextEncoder,
    anchors: list[str],
    positives: list[str],
    internal: np.ndarray,
    index: Index,
    pair_anchor: np.ndarray,
    pair_positive: np.ndarray,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The guide's cosine similarities: ``([P] anchor-positive, [P, K] anchor-candidate)``.

    Only the distinct retrieved candidates are embedded by the guide, not the whole corpus.
    """
    distinct, inverse = np.unique(internal, return_inverse=True)
    texts, _ = index.store.payloads(distinct)
    present = distinct >= 0
    candidate_vectors = np.zeros((len(distinct), guide.dim), dtype=np.float32)
    query_prompt, document_prompt = resolve_prompt(guide.prompts, QUERY), resolve_prompt(guide.prompts, DOCUMENT)
    candidate_vectors[present] = _encode(guide, [str(t) for t in texts[present]], document_prompt, True, batch_size)
    anchor_vectors = _encode(guide, anchors, query_prompt, True, batch_size)
    positive_vectors = _encode(guide, positives, document_prompt, True, batch_size)
    positive = np.einsum("pd,pd->p", anchor_vectors[pair_anchor], positive_vectors[pair_positive])
    per_anchor = np.einsum("ad,akd->ak", anchor_vectors, candidate_vectors[inverse.reshape(internal.shape)])
    return positive.astype(np.float32), per_anchor[pair_anchor].astype(np.float32)


def mine_hard_negatives(
    encoder: TextEncoder,
    pairs: Sequence[Example | tuple[str, str]],
    corpus: Index | Corpus | str | os.PathLike[str] | Sequence[Any] | None = None,
    *,
    num_negatives: int = 5,
    steps: Sequence[FilterSpec] = DEFAULT_STEPS,
    guide: TextEncoder | None = None,
    sampling: str = "top",
    seed: int = 0,
    spec: str = "torch",
    batch_size: int = 64,
    show_progress: bool | None = None,
    keep_incomplete: bool = False,
) -> Examples:
    """Mine ``num_negatives`` hard negatives for each (anchor, positive) pair; returns triplets.

    Args:
        encoder: the encoder whose embeddings rank the candidates.
        pairs: :class:`~embedkit.data.Examples` of kind pairs (or triplets: their negatives are replaced), a
            list of :class:`~embedkit.types.Example`, or ``(anchor, positive)`` tuples.
        corpus: an :class:`~embedkit.index.Index` built by ``encoder`` (or a ``bm25`` index); or a corpus to index
            with ``spec`` (anything :func:`~embedkit.index.build_index` takes); ``None`` indexes the distinct
            positives. A ``bm25`` or ``hybrid`` index picks the candidates; ``encoder`` scores them for the steps.
        num_negatives: negatives per pair; pairs that keep fewer are left out (with a :class:`MiningWarning`).
        steps: filter steps as a recipe's ``filters`` names them, run after duplicate masking and in order,
            e.g. ``[{"name": "margin", "margin": 0.1, "mode": "absolute"}, {"name": "rank-window", "start": 0,
            "end": 50}]``; :data:`DEFAULT_STEPS` (relative margin 0.05, ranks 10:100) by default, ``()`` for
            none. At most one ``rank-window``: its end is the search depth; without one the search goes
            ``SEARCH_HEADROOM * num_negatives`` past its start (see :func:`search_depth`).
        guide: an encoder whose similarities judge the ``margin`` and ``ceiling`` steps that name no ``source``
            (GISTEmbed), or ``None``; a step's own ``source`` wins.
        sampling: ``"top"`` (the hardest) or ``"random"`` (seeded, uniform over what the filters left).
        seed: seed of the random sampling.
        spec: index spec when ``corpus`` is not an index: ``torch``, ``faiss:...``, ``bm25``, ``hybrid:...``.
        batch_size: encoding batch size.
        show_progress: progress bars; by default for large inputs.
        keep_incomplete: keep the pairs that fewer than ``num_negatives`` candidates survive, with the negatives
            they have (maybe none: in training such a row has its in-batch negatives only), instead of leaving
            them out with a :class:`MiningWarning`.

    Returns:
        :class:`~embedkit.data.Examples` of kind triplets; each row has the pair's anchor and positive and a
        ``negatives`` tuple of ``num_negatives`` texts (fewer only with ``keep_incomplete``), hardest first.

    Raises:
        ConfigError: an unknown sampling, fewer than one negative, a bad step table (the message is the
            step's own), two rank windows, or steps that cannot leave ``num_negatives`` negatives.
    """
    if sampling not in SAMPLING:
        raise ConfigError(f"unknown sampling {sampling!r}; valid: {', '.join(SAMPLING)}")
    if num_negatives < 1:
        raise ConfigError(f"num_negatives must be at least 1, got {num_negatives}")
    filters = mining_steps(steps, guided=guide is not None, top_k=num_negatives if sampling == "top" else None)
    window = _rank_window(filters)
    _check_room(filters, num_negatives)
    rows = _pairs(pairs)
    embed = None
    if isinstance(corpus, Index):
        index = corpus
    else:
        index, embed = _index_with_embeddings(encoder, rows, corpus, spec, batch_size, show_progress)
    most_positives = int(max(np.unique([row.anchor for row in rows], return_counts=True)[1]))
    found = filter_candidates(
        encoder,
        rows,
        index,
        filters,
        search_depth(window, num_negatives, most_positives),
        guide=guide,
        embed=embed,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    chosen = _choose(found, num_negatives, sampling, seed)  # [P, n] internal ids, -1 where too few
    texts, _ = index.store.payloads(chosen)
    triplets = [
        Example(
            anchor=row.anchor,
            positive=row.positive,
            negatives=tuple(text for text, found in zip(negatives, ids >= 0, strict=True) if found),
            source=row.source,
        )
        for row, negatives, ids in zip(rows, texts, chosen, strict=True)
        if keep_incomplete or (ids >= 0).all()
    ]
    if len(triplets) < len(rows):
        warnings.warn(
            f"{len(rows) - len(triplets)} of {len(rows)} pairs kept fewer than {num_negatives} negatives after the "
            f"filters and were left out; widen the rank window, loosen the margin or the ceiling, or ask for fewer",
            MiningWarning,
            stacklevel=2,
        )
    return Examples(triplets, Kind.TRIPLETS)


def _index_with_embeddings(
    encoder: TextEncoder,
    rows: list[Example],
    corpus: Corpus | str | os.PathLike[str] | Sequence[Any] | None,
    spec: str,
    batch_size: int,
    show_progress: bool | None,
) -> tuple[Index, Embed]:
    """Index ``corpus`` (``None``: the distinct positives), embedding every distinct text of the corpus and the
    positives once after the document prompt, and the anchors once after the query prompt (when the two prompts
    are the same, a text that is both is embedded once): positives are usually corpus documents, and embedding is
    most of the cost.

    Returns the index and a lookup of the anchors' and positives' embeddings. The corpus's embeddings are held in
    memory together, as in sentence-transformers' miner; to mine a corpus too large for that, build the index
    with :func:`~embedkit.index.build_index` (chunked) and pass it instead.
    """
    positives = list(dict.fromkeys(row.positive for row in rows))
    # the empty documents some collections hold (Cranfield has two) are candidates like any other
    collection = as_corpus(positives if corpus is None else corpus, allow_blank=True)
    documents = as_corpus(list(collection), allow_blank=True)  # read once; iterated here and by build_index
    query_prompt, document_prompt = resolve_prompt(encoder.prompts, QUERY), resolve_prompt(encoder.prompts, DOCUMENT)
    wanted = [
        *((document_prompt, d.text) for d in documents),
        *((query_prompt, row.anchor) for row in rows),
        *((document_prompt, text) for text in positives),
    ]
    keys = list(dict.fromkeys(wanted))  # (prompt, text), each distinct pair embedded once
    row_of = {key: i for i, key in enumerate(keys)}
    vectors = np.zeros((len(keys), encoder.dim), dtype=np.float32)
    for prompt in dict.fromkeys(prompt for prompt, _ in keys):
        rows_of_prompt = [i for i, key in enumerate(keys) if key[0] == prompt]
        vectors[rows_of_prompt] = _encode(
            encoder, [keys[i][1] for i in rows_of_prompt], prompt, normalize=True, batch_size=batch_size
        )
    index = build_index(
        encoder,
        documents,
        spec=spec,
        metric="cosine",
        embeddings=vectors[[row_of[document_prompt, d.text] for d in documents]],
        batch_size=batch_size,
        show_progress=show_progress,
        prompt=document_prompt,
    )
    return index, lambda texts, prompt: vectors[[row_of[prompt, text] for text in texts]]


def _choose(found: Candidates, count: int, sampling: str, seed: int) -> np.ndarray:
    """``[P, count]`` internal ids of the chosen negatives, hardest first; ``-1`` pads rows with too few.

    The candidates are in score order already (best first), so the kept ones in column order are hardest
    first; random sampling draws among the kept columns and restores that order.
    """
    kept = torch.from_numpy(found.kept)
    if sampling == "random":
        keys = torch.rand(kept.shape, generator=torch.Generator().manual_seed(seed)).masked_fill(~kept, -1.0)
    else:
        keys = kept.float() - torch.arange(kept.shape[1]) / (kept.shape[1] + 1)  # kept first, then by column
    width = min(count, kept.shape[1])
    columns = keys.topk(width, dim=1).indices.sort(dim=1).values
    chosen = np.take_along_axis(found.internal, columns.numpy(), axis=1)
    chosen[~np.take_along_axis(found.kept, columns.numpy(), axis=1)] = -1
    if width < count:
        chosen = np.pad(chosen, ((0, 0), (0, count - width)), constant_values=-1)
    return chosen
