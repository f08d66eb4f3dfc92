"""Preference data end to end: rendering (prompt, response), reward models on encoders, pair selection.

Preference rows are one more contrastive data kind (anchor = prompt, positive = chosen, hard negative =
rejected, trained by any InfoNCE-family loss); this package adds what is specific to them:

- :func:`render_pair`: ``(prompt, response)`` as one encoder input within the model's maximum length;
- :class:`RewardModelObjective` (loss ``reward-bt``), :class:`RewardModel`, :func:`load_reward_model`: a
  Bradley-Terry reward head on an encoder, with a contrastive representation term;
- :func:`select_pairs`: which response pairs to label, by response-embedding dissimilarity (REAL).

Evaluation is :class:`embedkit.eval.preference.PreferenceEvaluator`; reward-model representations as
embeddings are :func:`embedkit.encoders.reward_model.load_reward_model_encoder`.
"""

from embedkit.preference.render import render_for, render_pair, render_pairs, tokenizer_of, truncate_left
from embedkit.preference.reward import (
    RewardHead,
    RewardModel,
    RewardModelObjective,
    bradley_terry_loss,
    has_reward_head,
    load_reward_model,
)
from embedkit.preference.select import STRATEGIES, SelectedPair, read_response_groups, select_pairs

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
