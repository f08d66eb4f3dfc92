"""Import paths of embedkit 0.1 that users may have written keep working after the regrouping by layer."""

from __future__ import annotations

import embedkit.mining
import embedkit.preference
from embedkit.data import render
from embedkit.encoders import reward
from embedkit.losses import preference
from embedkit.mining import hard_negatives, response_pairs


def test_the_preference_names_are_the_ones_of_their_layers():
    assert embedkit.preference.render_pair is render.render_pair
    assert embedkit.preference.RewardModel is reward.RewardModel
    assert embedkit.preference.load_reward_model is reward.load_reward_model
    assert embedkit.preference.RewardModelObjective is preference.RewardModelObjective
    assert embedkit.preference.select_pairs is response_pairs.select_pairs


def test_mining_names_are_the_ones_of_the_package():
    assert embedkit.mining.mine_hard_negatives is hard_negatives.mine_hard_negatives
    assert embedkit.mining.MiningWarning is hard_negatives.MiningWarning
