"""The reward model on an encoder: Bradley-Terry loss, the contrastive term, training, saving and loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embedkit.data import Examples, collate
from embedkit.data.render import render_for
from embedkit.encoders import load_encoder
from embedkit.encoders.reward import RewardHead, RewardModel, has_reward_head, load_reward_model
from embedkit.errors import ConfigError, DataError, EmbedkitError
from embedkit.losses import LOSSES, build_loss
from embedkit.losses.preference import RewardModelObjective, bradley_terry_loss
from embedkit.training.fit import FitSettings, fit
from embedkit.types import Example, Kind

ROWS = [
    ("\n\nHuman: where is the cat?\n\nAssistant:", " the cat sat on the mat", " a dog runs"),
    ("\n\nHuman: what does she play?\n\nAssistant:", " she plays the piano", " the train leaves"),
    ("\n\nHuman: when does the train leave?\n\nAssistant:", " the train leaves at noon", " rain falls"),
    ("\n\nHuman: what do children build?\n\nAssistant:", " a castle of sand", " "),  # a blank reply is real data
]


def preference_examples(rows=ROWS, margins=None) -> Examples:
    margins = margins or [None] * len(rows)
    return Examples([Example(anchor=p, positive=c, negatives=(r,), score=m)
                     for (p, c, r), m in zip(rows, margins)], Kind.PREFERENCE)


def test_bradley_terry_loss_matches_a_loop() -> None:
    chosen, rejected = torch.tensor([2.0, -1.0, 0.5, 30.0]), torch.tensor([1.0, 1.0, 0.5, -30.0])
    margins = torch.tensor([0.0, 0.5, 1.0, 2.0])
    for margin in (0.0, 0.7, margins):
        m = margin if isinstance(margin, torch.Tensor) else torch.full((4,), margin)
        expected = sum(math.log1p(math.exp(-(c - r - mi))) for c, r, mi in zip(chosen, rejected, m)) / 4
        assert bradley_terry_loss(chosen, rejected, margin).item() == pytest.approx(float(expected), rel=1e-6)


def test_reward_head_reads_the_direction_of_the_representation() -> None:
    torch.manual_seed(0)
    head = RewardHead(8)
    h = torch.randn(3, 8)
    expected = head.linear(h / h.norm(dim=1, keepdim=True) * math.sqrt(8)).squeeze(-1)
    torch.testing.assert_close(head(h), expected)
    torch.testing.assert_close(head(5 * h), head(h))
    assert RewardHead()(h).shape == (3,)  # lazy: the size comes from the first batch


@pytest.fixture
def encoder(tiny_model_path):
    return load_encoder(tiny_model_path, precision="fp32").eval()  # eval: no dropout, so values are exact


def rewards_of(encoder, objective, prompts, replies) -> torch.Tensor:
    return objective.head(encoder(render_for(encoder, prompts, replies)))


def test_objective_is_bradley_terry_on_rendered_pairs(encoder) -> None:
    objective = RewardModelObjective(margin=0.3, dim=encoder.dim)
    batch = collate(preference_examples(), Kind.PREFERENCE)
    prompts = [p for p, _, _ in ROWS]
    chosen = rewards_of(encoder, objective, prompts, [c for _, c, _ in ROWS])
    rejected = rewards_of(encoder, objective, prompts, [r for _, _, r in ROWS])
    expected = sum(math.log1p(math.exp(-(c - r - 0.3))) for c, r in zip(chosen.tolist(), rejected.tolist())) / 4
    assert objective(encoder, batch).item() == pytest.approx(expected, rel=1e-5)


def test_row_scores_are_per_row_margins(encoder) -> None:
    margins = [0.0, 1.0, 2.0, 0.5]
    objective = RewardModelObjective(margin=9.0, dim=encoder.dim)  # ignored: the rows carry their margins
    batch = collate(preference_examples(margins=margins), Kind.PREFERENCE)
    prompts = [p for p, _, _ in ROWS]
    gap = (rewards_of(encoder, objective, prompts, [c for _, c, _ in ROWS])
           - rewards_of(encoder, objective, prompts, [r for _, _, r in ROWS])).tolist()
    expected = sum(math.log1p(math.exp(-(g - m))) for g, m in zip(gap, margins)) / 4
    assert objective(encoder, batch).item() == pytest.approx(expected, rel=1e-5)


def test_contrastive_term_is_infonce_over_chosen_and_rejected(encoder) -> None:
    plain = RewardModelObjective(dim=encoder.dim)
    mixed = RewardModelObjective(contrastive_weight=0.5, temperature=0.1, dim=encoder.dim)
    mixed.head.load_state_dict(plain.head.state_dict())
    batch = collate(preference_examples(), Kind.PREFERENCE)
    prompts = [p for p, _, _ in ROWS]
    with torch.no_grad():
        chosen = torch.nn.functional.normalize(encoder(render_for(encoder, prompts, [c for _, c, _ in ROWS])), dim=1)
        rejected = torch.nn.functional.normalize(encoder(render_for(encoder, prompts, [r for _, _, r in ROWS])), dim=1)
    # row i: its chosen text against every chosen text (the second view; in eval mode it equals the first)
    # and every rejected text; the target is its own chosen text
    terms = []
    for i in range(4):
        logits = [float(chosen[i] @ c) / 0.1 for c in chosen] + [float(chosen[i] @ r) / 0.1 for r in rejected]
        terms.append(-(logits[i] - math.log(sum(math.exp(x) for x in logits))))
    expected = plain(encoder, batch).item() + 0.5 * sum(terms) / 4
    assert mixed(encoder, batch).item() == pytest.approx(expected, rel=1e-5)


def test_setup_sizes_a_lazy_head_from_a_fixed_seed_and_keeps_a_sized_one(encoder) -> None:
    heads = []
    for seed in (1, 2):  # whatever the global generator's state, and without advancing it
        torch.manual_seed(seed)
        objective = build_loss("reward-bt")
        objective.setup(encoder)
        objective.setup(encoder)  # idempotent
        assert torch.rand(1).item() == torch.rand(1, generator=torch.Generator().manual_seed(seed)).item()
        heads.append(objective.head.state_dict())
    assert heads[0]["linear.weight"].shape == (1, encoder.dim)
    torch.testing.assert_close(heads[0], heads[1])
    sized = RewardModelObjective(dim=encoder.dim)
    before = {k: v.clone() for k, v in sized.head.state_dict().items()}
    sized.setup(encoder)
    torch.testing.assert_close(sized.head.state_dict(), before)  # in one process, rank 0's head is its own


def test_objective_refuses_other_kinds(encoder) -> None:
    pairs = [Example(anchor="the cat", positive="a dog"), Example(anchor="the sun", positive="rain")]
    with pytest.raises(DataError, match="preference rows"):
        RewardModelObjective()(encoder, collate(pairs, Kind.PAIRS))
    with pytest.raises(ConfigError, match="contrastive_weight"):
        RewardModelObjective(contrastive_weight=-1)


def test_registered_as_reward_bt() -> None:
    spec = LOSSES.get("reward-bt")
    assert spec.kinds == (Kind.PREFERENCE,)
    assert {"margin", "contrastive_weight", "temperature"} <= set(spec.parameters())
    objective = build_loss("reward-bt", margin=0.5, contrastive_weight=0.1)
    assert isinstance(objective, RewardModelObjective) and objective.margin == 0.5
    with pytest.raises(ConfigError, match="no parameter"):
        build_loss("reward-bt", scale=2)


def settings(tmp_path, **changes) -> FitSettings:
    base = dict(output_dir=tmp_path, batch_size=2, lr=1e-3, max_steps=4, save_steps=2, log_steps=1,
                show_progress=False, seed=3)
    return FitSettings(**{**base, **changes})


def test_fit_trains_encoder_and_head_and_saves_a_loadable_reward_model(tiny_model_path, tmp_path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    objective = build_loss("reward-bt", contrastive_weight=0.1)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    fit(encoder, preference_examples(), objective, settings(tmp_path / "run"))
    assert any(not torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert objective.head.dim == encoder.dim

    model = RewardModel(encoder, objective.head).eval()
    prompts, replies = [p for p, _, _ in ROWS], [c for _, c, _ in ROWS]
    scores = model.score(prompts, replies)
    assert scores.dtype == np.float32 and scores.shape == (4,)
    model.save(tmp_path / "rm")
    assert has_reward_head(tmp_path / "rm") and not has_reward_head(tiny_model_path)
    loaded = load_reward_model(tmp_path / "rm", precision="fp32")
    np.testing.assert_allclose(loaded.score(prompts, replies), scores, rtol=1e-5, atol=1e-6)
    # the run's own final model is the same reward model: fit saves the head beside the encoder
    from_run = load_reward_model(tmp_path / "run" / "final", precision="fp32")
    np.testing.assert_allclose(from_run.score(prompts, replies), scores, rtol=1e-5, atol=1e-6)


def test_save_heads_puts_the_head_beside_a_saved_encoder(tiny_model_path, tmp_path, monkeypatch) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    objective = RewardModelObjective(dim=encoder.dim)
    encoder.save(tmp_path / "m")
    objective.save_heads(tmp_path / "m")
    monkeypatch.delenv("EMBEDKIT_BACKEND")  # the default backend, auto, would take OpenVINO for a plain encoder
    loaded = load_reward_model(tmp_path / "m", precision="fp32")
    torch.testing.assert_close(loaded.head.state_dict(), objective.head.state_dict())
    assert loaded.encoder.backend == "torch"  # reward models run in torch


def test_interrupted_reward_training_resumes_to_the_same_head(tiny_model_path, tmp_path) -> None:
    straight = build_loss("reward-bt")
    fit(load_encoder(tiny_model_path, precision="fp32"), preference_examples(), straight, settings(tmp_path / "a"))

    class Crash(Exception):
        pass

    def crash(step: int, metrics: dict) -> None:
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        fit(load_encoder(tiny_model_path, precision="fp32"), preference_examples(), build_loss("reward-bt"),
            settings(tmp_path / "b"), callbacks=[crash])
    resumed = build_loss("reward-bt")
    fit(load_encoder(tiny_model_path, precision="fp32"), preference_examples(), resumed, settings(tmp_path / "b"))
    torch.testing.assert_close(resumed.head.state_dict(), straight.head.state_dict())


def test_loading_a_plain_encoder_as_a_reward_model_is_a_clear_error(tiny_model_path) -> None:
    with pytest.raises(EmbedkitError, match="no reward head"):
        load_reward_model(tiny_model_path)
