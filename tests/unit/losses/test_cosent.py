"""CoSENT against a loop of its formula, closed forms and sentence-transformers' CoSENTLoss."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers.sentence_transformer.losses import CoSENTLoss as STCoSENTLoss

from embedkit.encoders import load_encoder
from embedkit.errors import ConfigError
from embedkit.losses import LOSSES, build_loss
from embedkit.losses.cosent import CoSENTLoss
from embedkit.training.fit import FitSettings, fit
from embedkit.training.recipe import load_config
from embedkit.types import EmbeddedBatch, Example, Kind

REPO = Path(__file__).resolve().parents[3]


def scored_batch(first: torch.Tensor, second: torch.Tensor, gold) -> EmbeddedBatch:
    b = first.shape[0]
    return EmbeddedBatch(first, second, torch.arange(b), torch.arange(b, 2 * b),
                         scores=torch.as_tensor(gold, dtype=torch.float32))


def random_batch(b: int = 8, d: int = 8, seed: int = 0, gold=None) -> EmbeddedBatch:
    gen = torch.Generator().manual_seed(seed)
    first = torch.randn(b, d, generator=gen, dtype=torch.float64)
    second = first + torch.randn(b, d, generator=gen, dtype=torch.float64)
    if gold is None:
        gold = torch.randint(0, 6, (b,), generator=gen).float()  # STS-like scores with ties
    return scored_batch(first, second, gold)


def reference_cosent(batch: EmbeddedBatch, scale: float) -> float:
    """log(1 + sum over ordered pairs of exp(scale (cos_j - cos_i))), pair by pair, in float64."""
    u, v = batch.anchors.detach().double().numpy(), batch.candidates.detach().double().numpy()
    gold = batch.scores.tolist()
    cos = [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(u, v)]
    terms = [scale * (cos[j] - cos[i]) for i in range(len(cos)) for j in range(len(cos)) if gold[i] > gold[j]]
    top = max([0.0, *terms])
    return top + math.log(math.exp(-top) + sum(math.exp(t - top) for t in terms))


@pytest.mark.parametrize("scale", [1.0, 20.0, 100.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_loop_reference(scale: float, seed: int) -> None:
    batch = random_batch(seed=seed)
    assert CoSENTLoss(scale)(batch).item() == pytest.approx(reference_cosent(batch, scale), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 3])
def test_equals_sentence_transformers_value_and_gradient(seed: int) -> None:
    batch = random_batch(b=16, d=12, seed=seed)
    ours_inputs = (batch.anchors.clone().requires_grad_(), batch.candidates.clone().requires_grad_())
    theirs_inputs = (batch.anchors.clone().requires_grad_(), batch.candidates.clone().requires_grad_())
    ours = CoSENTLoss(scale=20.0)(scored_batch(*ours_inputs, batch.scores))
    theirs = STCoSENTLoss(model=None, scale=20.0).compute_loss_from_embeddings(list(theirs_inputs), batch.scores)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    ours.backward()
    theirs.backward()
    for mine, st in zip(ours_inputs, theirs_inputs):
        # embedkit takes cosines in float32 whatever the input dtype: float32 round-off is the tolerance.
        torch.testing.assert_close(mine.grad, st.grad, rtol=1e-4, atol=1e-6)


def test_equal_cosines_give_log_of_one_plus_the_ordered_pairs() -> None:
    ones = torch.ones(4, 3)
    gold = [3.0, 1.0, 1.0, 0.0]  # ordered pairs: 3>1 twice, 3>0, 1>0 twice = 5; the tie adds nothing
    assert CoSENTLoss()(scored_batch(ones, ones.clone(), gold)).item() == pytest.approx(math.log(6), rel=1e-6)


def test_all_gold_scores_equal_give_zero() -> None:
    batch = random_batch(gold=torch.full((8,), 2.5))
    assert CoSENTLoss()(batch).item() == 0.0


def test_only_the_order_of_gold_scores_matters() -> None:
    batch = random_batch(seed=5)
    rescaled = scored_batch(batch.anchors, batch.candidates, 1 + 0.8 * batch.scores)  # e.g. STS 0-5 -> SICK 1-5
    assert CoSENTLoss()(batch).item() == CoSENTLoss()(rescaled).item()


def test_right_and_wrong_order_closed_forms() -> None:
    """Two pairs: cosines 1 and 0. Right order: log(1 + e^{-s}); wrong order: log(1 + e^{s})."""
    first = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    second = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    right = CoSENTLoss(scale=5.0)(scored_batch(first, second, [5.0, 0.0]))
    wrong = CoSENTLoss(scale=5.0)(scored_batch(first, second, [0.0, 5.0]))
    assert right.item() == pytest.approx(math.log1p(math.exp(-5)), rel=1e-5)
    assert wrong.item() == pytest.approx(math.log1p(math.exp(5)), rel=1e-6)


def test_gradients_finite_on_adversarial_inputs() -> None:
    gold = torch.tensor([0.0, 1.0, 2.0, 3.0])
    for first_fill, second_fill in [(torch.zeros, torch.ones), (torch.ones, torch.ones), (torch.zeros, torch.zeros)]:
        for scale in (1e-4, 20.0, 1e4):
            first = first_fill(4, 8).requires_grad_()
            second = second_fill(4, 8).requires_grad_()
            value = CoSENTLoss(scale)(scored_batch(first, second, gold))
            value.backward()
            assert torch.isfinite(value)
            assert torch.isfinite(first.grad).all() and torch.isfinite(second.grad).all()


def test_wrong_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match="scale"):
        CoSENTLoss(scale=0.0)
    unscored = EmbeddedBatch(torch.ones(2, 3), torch.ones(2, 3), torch.arange(2), torch.arange(2, 4))
    with pytest.raises(ConfigError, match="scored pairs"):
        CoSENTLoss()(unscored)


def test_registered_for_scored_pairs() -> None:
    spec = LOSSES.get("cosent")
    assert spec.kinds == (Kind.SCORED,) and spec.parameters() == {"scale": 20.0} and "Su" in spec.reference
    assert build_loss("cosent", scale=10.0).scale == 10.0


def test_recipe_loads_and_builds() -> None:
    config = load_config(REPO / "recipes" / "cosent.toml")
    spec = LOSSES.get(config.loss.name)
    assert isinstance(spec.build(**config.loss.params), CoSENTLoss)
    assert Kind(config.data.kind) in spec.kinds and (REPO / config.data.path).is_file()


def test_fit_runs_two_steps(tiny_model_path, tmp_path) -> None:
    rows = [
        Example(anchor=a, positive=b, score=s)
        for a, b, s in [("a cat", "the cat", 4.5), ("a dog", "the sun", 0.5), ("rain", "the rain", 4.0),
                        ("a ship", "a train", 1.5), ("a book", "old ships", 1.0), ("noon", "the train", 2.0)]
    ]
    encoder = load_encoder(tiny_model_path, precision="fp32")
    settings = FitSettings(output_dir=tmp_path, batch_size=3, max_steps=2, show_progress=False, save_steps=10)
    result = fit(encoder, rows, build_loss("cosent"), settings, kind="scored")
    assert result.steps == 2 and all(math.isfinite(r["loss"]) for r in result.history if "loss" in r)
