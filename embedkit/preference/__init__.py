"""Preference data, under the names of embedkit 0.1 (kept so that existing imports keep working).

Preference rows are one more contrastive data kind; what is specific to them now lives in its layer:
rendering in :mod:`embedkit.data.render`, reward heads and models in :mod:`embedkit.encoders.reward`, the
``reward-bt`` loss in :mod:`embedkit.losses.preference`, pair selection in :mod:`embedkit.mining.response_pairs`,
evaluation in :mod:`embedkit.eval.preference`.
"""

from embedkit.data.render import render_for, render_pair, render_pairs, tokenizer_of, truncate_left
from embedkit.encoders.reward import RewardHead, RewardModel, has_reward_head, load_reward_model
from embedkit.losses.preference import RewardModelObjective, bradley_terry_loss
from embedkit.mining.response_pairs import STRATEGIES, SelectedPair, read_response_groups, select_pairs

__all__ = [
    "STRATEGIES",
    "RewardHead",
    "RewardModel",
    "RewardModelObjective",
    "SelectedPair",
    "bradley_terry_loss",
    "has_reward_head",
    "load_reward_model",
    "read_response_groups",
    "render_for",
    "render_pair",
    "render_pairs",
    "select_pairs",
    "tokenizer_of",
    "truncate_left",
]
