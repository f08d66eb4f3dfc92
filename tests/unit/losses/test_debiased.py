"""Debiased InfoNCE against a loop of the paper's formula in exact decimal arithmetic, and closed forms."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from embedkit.encoders import load_encoder
from embedkit.errors import ConfigError
from embedkit.losses import LOSSES, InfoNCELoss, MaskDuplicates, TopKHardest, build_loss
from embedkit.losses.debiased import DebiasedInfoNCELoss
from embedkit.training.fit import FitSettings, fit
from embedkit.training.recipe import load_config
from embedkit.types import EmbeddedBatch, Example, Kind

REPO = Path(__file__).resolve().parents[3]


def make_batch(b: int, n_neg: int, d: int = 8, seed: int = 0, groups: list[int] | None = None) -> EmbeddedBatch:
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.randn(b, d, generator=gen, dtype=torch.float64)
    candidates = torch.randn(b * (1 + n_neg), d, generator=gen, dtype=torch.float64)
    ids = torch.tensor(groups) if groups is not None else torch.arange(b + b * (1 + n_neg))
    return EmbeddedBatch(anchors, candidates, ids[:b], ids[b:])


def reference_debiased(batch: EmbeddedBatch, temperature: float, tau_plus: float, keep=None) -> float:
    """The paper's formula row by row, with 50-digit decimals so that exp(1/t) never overflows.

    ``keep(i, j)`` says whether candidate ``j`` is a usable negative of row ``i`` (default: any other text).
    """
    anchors = batch.anchors.detach().double().numpy()
    candidates = batch.candidates.detach().double().numpy()
    anchor_ids, candidate_ids = batch.anchor_groups.tolist(), batch.candidate_groups.tolist()
    if keep is None:
        def keep(i: int, j: int) -> bool:
            return candidate_ids[j] not in (anchor_ids[i], candidate_ids[i])
    t, tau = Decimal(temperature), Decimal(tau_plus)
    total = Decimal(0)
    with localcontext() as context:
        context.prec = 50
        for i, a in enumerate(anchors):
            cosine = [Decimal(float(a @ c / (np.linalg.norm(a) * np.linalg.norm(c)))) for c in candidates]
            pos = (cosine[i] / t).exp()
            negatives = [j for j in range(len(candidates)) if j != i and keep(i, j)]
            n = len(negatives)
            neg = sum(((cosine[j] / t).exp() for j in negatives), Decimal(0))
            ng = max((neg - n * tau * pos) / (1 - tau), n * (Decimal(-1) / t).exp())
            total += -(pos / (pos + ng)).ln()
    return float(total / len(anchors))


@pytest.mark.parametrize("n_neg", [0, 2])
@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("tau_plus", [0.0, 0.1, 0.5, 0.9])
def test_matches_the_papers_formula(n_neg: int, temperature: float, tau_plus: float) -> None:
    batch = make_batch(6, n_neg, seed=n_neg)
    value = DebiasedInfoNCELoss(temperature=temperature, tau_plus=tau_plus)(batch)
    assert value.item() == pytest.approx(reference_debiased(batch, temperature, tau_plus), rel=1e-5)


def test_duplicates_are_not_counted_as_negatives() -> None:
    groups = [0, 1, 0, 3, 0, 1, 0, 3]  # rows 0 and 2 are the same text
    batch = make_batch(4, 0, groups=groups)
    value = DebiasedInfoNCELoss(temperature=0.2, tau_plus=0.2)(batch)
    assert value.item() == pytest.approx(reference_debiased(batch, 0.2, 0.2), rel=1e-5)


def test_n_counts_the_negatives_left_by_the_steps() -> None:
    batch = make_batch(6, 1, seed=4)
    loss = DebiasedInfoNCELoss(temperature=0.5, tau_plus=0.3, steps=(MaskDuplicates(), TopKHardest(2)))
    kept = loss.scores(batch).valid

    def keep(i: int, j: int) -> bool:
        return bool(kept[i, j])

    assert loss(batch).item() == pytest.approx(reference_debiased(batch, 0.5, 0.3, keep), rel=1e-5)


@pytest.mark.parametrize("n_neg", [0, 1])
@pytest.mark.parametrize("temperature", [0.05, 1.0])
@pytest.mark.parametrize("symmetric", [False, True])
def test_tau_plus_zero_is_infonce(n_neg: int, temperature: float, symmetric: bool) -> None:
    batch = make_batch(8, n_neg, seed=7)
    debiased = DebiasedInfoNCELoss(temperature=temperature, tau_plus=0.0, symmetric=symmetric)(batch)
    plain = InfoNCELoss(temperature=temperature, symmetric=symmetric)(batch)
    assert debiased.item() == pytest.approx(plain.item(), rel=1e-6)


@pytest.mark.parametrize("tau_plus", [0.0, 0.3, 0.9])
def test_identical_embeddings_give_log_of_the_candidate_count(tau_plus: float) -> None:
    """All cosines 1: the estimator returns N e^{1/t} exactly (a tau_plus share removed and added back)."""
    b = 5
    ones = torch.ones(b, 4)
    batch = EmbeddedBatch(ones, ones.clone(), torch.arange(b), torch.arange(b, 2 * b))
    value = DebiasedInfoNCELoss(temperature=0.1, tau_plus=tau_plus)(batch)
    assert value.item() == pytest.approx(math.log(b), rel=1e-5)


def test_clamp_closed_form() -> None:
    """Positive at cosine 1, negatives at 0, t = 1, tau_plus = 0.5: N tau_plus e exceeds the negative sum N,
    so the estimator is negative and the clamp N e^{-1} applies: loss = log(1 + N e^{-1} / e)."""
    eye = torch.eye(4)
    batch = EmbeddedBatch(eye, eye.clone(), torch.arange(4), torch.arange(4, 8))
    value = DebiasedInfoNCELoss(temperature=1.0, tau_plus=0.5)(batch)
    assert value.item() == pytest.approx(math.log1p(3 * math.exp(-2)), rel=1e-6)
    # The estimate (N - N tau e) / (1 - tau) exceeds the clamp N / e for tau below (1 - 1/e) / (e - 1/e) = 0.269.
    for tau in (0.25, 0.3):
        estimate = max((3 - 3 * tau * math.e) / (1 - tau), 3 / math.e)
        value = DebiasedInfoNCELoss(temperature=1.0, tau_plus=tau)(batch)
        assert value.item() == pytest.approx(math.log1p(estimate / math.e), rel=1e-6)
    tau = 0.1
    estimate = (3 - 3 * tau * math.e) / (1 - tau)
    value = DebiasedInfoNCELoss(temperature=1.0, tau_plus=tau)(batch)
    assert value.item() == pytest.approx(math.log1p(estimate / math.e), rel=1e-6)


def test_huge_logits_stay_exact_in_log_space() -> None:
    """At t = 0.001 the logits reach 1000: exp() overflows float64, the log-space loss does not."""
    batch = make_batch(6, 1, seed=11)
    for tau_plus in (0.0, 0.1, 0.6):
        value = DebiasedInfoNCELoss(temperature=1e-3, tau_plus=tau_plus)(batch)
        assert value.item() == pytest.approx(reference_debiased(batch, 1e-3, tau_plus), rel=1e-4)


def test_a_row_without_negatives_contributes_zero() -> None:
    anchors = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    candidates = torch.randn(2, 4, dtype=torch.float64)
    # Row 1's positive has the text of anchor 0, so row 0 has no usable negative left.
    batch = EmbeddedBatch(anchors, candidates, torch.tensor([0, 1]), torch.tensor([10, 0]))
    loss = DebiasedInfoNCELoss(tau_plus=0.2)
    assert loss.scores(batch).valid[0].tolist() == [True, False]
    value = loss(batch)
    value.backward()
    assert torch.isfinite(anchors.grad).all() and anchors.grad[0].abs().sum() == 0
    assert value.item() == pytest.approx(reference_debiased(batch, 0.05, 0.2), rel=1e-5)


def test_gradients_finite_on_adversarial_inputs() -> None:
    ids = torch.arange(8)
    for make in (torch.zeros, torch.ones):
        for temperature in (1e-4, 0.05, 1e4):
            for tau_plus in (0.0, 0.5, 0.99):
                anchors = make(4, 8).requires_grad_()
                candidates = torch.ones(4, 8).requires_grad_()
                value = DebiasedInfoNCELoss(temperature, tau_plus)(EmbeddedBatch(anchors, candidates, ids[:4], ids[4:]))
                value.backward()
                assert torch.isfinite(value)
                assert torch.isfinite(anchors.grad).all() and torch.isfinite(candidates.grad).all()


def test_gradient_matches_finite_differences() -> None:
    batch = make_batch(4, 1, d=5, seed=2)
    anchors = batch.anchors.clone().requires_grad_()
    candidates = batch.candidates.clone().requires_grad_()
    loss = DebiasedInfoNCELoss(temperature=0.5, tau_plus=0.2)

    def value(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # float64 throughout, so that finite differences are meaningful
        return loss(EmbeddedBatch(a, c, batch.anchor_groups, batch.candidate_groups)).double()

    torch.autograd.gradcheck(value, (anchors, candidates), eps=1e-3, atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("tau_plus", [-0.1, 1.0, 1.5])
def test_tau_plus_outside_0_1_is_refused(tau_plus: float) -> None:
    with pytest.raises(ConfigError, match="tau_plus"):
        DebiasedInfoNCELoss(tau_plus=tau_plus)
    with pytest.raises(ConfigError, match="tau_plus"):
        build_loss("debiased-infonce", tau_plus=tau_plus)


def test_registered_with_its_parameters() -> None:
    spec = LOSSES.get("debiased-infonce")
    assert spec.parameters() == {
        "temperature": 0.05, "tau_plus": 0.1, "symmetric": False, "filters": (), "mask_duplicates": True,
    }
    assert "Chuang" in spec.reference and Kind.SENTENCES in spec.kinds
    loss = build_loss("debiased-infonce", tau_plus=0.2, filters=[{"name": "top-k", "k": 3}])
    assert isinstance(loss, DebiasedInfoNCELoss) and loss.tau_plus == 0.2
    assert [type(step).__name__ for step in loss.steps] == ["MaskDuplicates", "TopKHardest"]


def test_recipe_loads_and_builds() -> None:
    config = load_config(REPO / "recipes" / "debiased.toml")
    spec = LOSSES.get(config.loss.name)
    assert isinstance(spec.build(**config.loss.params), DebiasedInfoNCELoss)
    assert Kind(config.data.kind) in spec.kinds and (REPO / config.data.path).is_file()


def test_fit_runs_two_steps(tiny_model_path, tmp_path) -> None:
    rows = [Example(anchor=s, positive=s) for s in ["a cat", "a dog", "the sun", "the rain", "a ship", "a train"]]
    encoder = load_encoder(tiny_model_path, precision="fp32")
    settings = FitSettings(output_dir=tmp_path, batch_size=3, max_steps=2, show_progress=False, save_steps=10)
    loss = build_loss("debiased-infonce", filters=[{"name": "top-k", "k": 1}])
    result = fit(encoder, rows, loss, settings, kind="sentences")
    assert result.steps == 2 and all(math.isfinite(r["loss"]) for r in result.history if "loss" in r)
