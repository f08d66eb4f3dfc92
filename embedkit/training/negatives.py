"""Hard negatives mined during training, with the model being trained.

Before the first step, and again every ``every`` steps, the training pairs get hard negatives from a corpus,
searched with the current weights and filtered by the same steps as in-batch negatives (Xiong et al., 2021,
"Approximate Nearest Neighbor Negative Contrastive Learning for Dense Text Retrieval": negatives refreshed
from the model being trained). A known positive of the same query is never a negative (mining's duplicate
masking). A pair for which no candidate survives the filters stays, with in-batch negatives alone, and is
counted: the training set never shrinks between refreshes.

Each refresh is saved in the run folder (``mined/step-<N>.jsonl``), so that a resumed run trains on exactly
the rows an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from embedkit.data import Examples
from embedkit.encoders import Encoder
from embedkit.fsutil import atomic_write_bytes
from embedkit.losses.steps import FilterSpec
from embedkit.mining import mine_hard_negatives
from embedkit.mining.hard_negatives import DEFAULT_STEPS
from embedkit.types import Example, Kind

MINED_DIR = "mined"


@dataclass(frozen=True)
class NegativeMiner:
    """Mines ``num_negatives`` hard negatives for training pairs from ``corpus`` (see the module docs).

    Args:
        corpus: documents to mine from (a BEIR folder, a corpus file); ``None``: the pairs' distinct positives.
        num_negatives: negatives per pair.
        steps: filter step tables, as :func:`~embedkit.mining.mine_hard_negatives` takes them.
        every: re-mine every this many optimisation steps; ``0`` mines once, before training.
        spec: the index spec searched.
        batch_size: encoding batch size.
    """

    corpus: str | os.PathLike[str] | None = None
    num_negatives: int = 1
    steps: Sequence[FilterSpec] = DEFAULT_STEPS
    every: int = 0
    spec: str = "torch"
    batch_size: int = 64

    def __call__(self, encoder: Encoder, pairs: Sequence[Example]) -> Examples:
        """Triplets for ``pairs`` by the current weights of ``encoder``; rows keep the negatives they got."""
        return mine_hard_negatives(
            encoder,
            pairs,
            self.corpus,
            num_negatives=self.num_negatives,
            steps=self.steps,
            spec=self.spec,
            batch_size=self.batch_size,
            show_progress=False,
            keep_incomplete=True,
        )

    def due(self, step: int) -> bool:
        """Whether the negatives are mined again before optimisation step ``step + 1``."""
        return step == 0 or (self.every > 0 and step % self.every == 0)


def mining_summary(rows: Sequence[Example], num_negatives: int) -> dict[str, int]:
    """Counts for the log: rows, negatives found, rows with fewer than asked, rows with in-batch negatives only."""
    counts = [len(row.negatives) for row in rows]
    return {
        "rows": len(rows),
        "negatives": sum(counts),
        "short": sum(count < num_negatives for count in counts),
        "in_batch_only": counts.count(0),
    }


def save_mined(output_dir: Path, step: int, rows: Sequence[Example]) -> Path:
    """Write the rows mined before step ``step + 1`` as ``mined/step-<step>.jsonl``."""
    path = output_dir / MINED_DIR / f"step-{step}.jsonl"
    lines = [
        json.dumps({"anchor": row.anchor, "positive": row.positive, "negatives": list(row.negatives)},
                   ensure_ascii=False)
        for row in rows
    ]
    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))
    return path


def load_mined(output_dir: Path, step: int) -> tuple[int, Examples] | None:
    """``(mined at step, rows)`` of the latest refresh at or before ``step``, or ``None`` when there is none."""
    saved = {int(path.stem.removeprefix("step-")): path for path in (output_dir / MINED_DIR).glob("step-*.jsonl")}
    earlier = [mined_at for mined_at in saved if mined_at <= step]
    if not earlier:
        return None
    mined_at = max(earlier)
    rows = [json.loads(line) for line in saved[mined_at].read_text(encoding="utf-8").splitlines()]
    return mined_at, Examples(
        [Example(anchor=r["anchor"], positive=r["positive"], negatives=tuple(r["negatives"])) for r in rows],
        Kind.TRIPLETS,
    )
