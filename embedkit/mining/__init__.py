"""Mining training data with an encoder: hard negatives from an index, and response pairs to label.

- :func:`mine_hard_negatives`: index search -> a score table -> the filter steps of :mod:`embedkit.losses.steps`;
- :func:`select_pairs`: which response pairs to label, by response-embedding dissimilarity (REAL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedkit.lazy import lazy_exports

if TYPE_CHECKING:
    from embedkit.mining.hard_negatives import MiningWarning, filter_candidates, mine_hard_negatives
    from embedkit.mining.response_pairs import STRATEGIES, SelectedPair, read_response_groups, select_pairs

# Imported on first use: the CLI reads STRATEGIES without loading torch.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(
            ("MiningWarning", "filter_candidates", "mine_hard_negatives"), "embedkit.mining.hard_negatives"
        ),
        **dict.fromkeys(
            ("STRATEGIES", "SelectedPair", "read_response_groups", "select_pairs"), "embedkit.mining.response_pairs"
        ),
    },
)

__all__ = [
    "STRATEGIES",
    "MiningWarning",
    "SelectedPair",
    "filter_candidates",
    "mine_hard_negatives",
    "read_response_groups",
    "select_pairs",
]
