"""DCLR: loop reference of the paper's loss, instance weights, noise negatives, adversarial inputs, errors, fit/resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from embedkit.data import Examples
from embedkit.data.collate import collate
from embedkit.encoders import load_encoder
from embedkit.errors import ConfigError, EmbedkitError
from embedkit.losses import LOSSES, InfoNCELoss, build_loss
from embedkit.losses.dclr import DCLRObjective
from embedkit.training.fit import FitSettings, fit
from embedkit.types import EmbeddedBatch, Example, Kind

SENTENCES = [
    "the cat sat on the mat",
    "a dog runs in the park",
    "the sun rises in the east",
    "rain falls on the green hills",
    "she plays the piano every evening",
    "he reads a book about old ships",
    "the train leaves at noon",
    "children build a castle of sand",
]


def views(b: int = 5, d: int = 8, seed: int = 0) -> EmbeddedBatch:
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.randn(b, d, generator=gen, dtype=torch.float64, requires_grad=True)
    candidates = torch.randn(b, d, generator=gen, dtype=torch.float64, requires_grad=True)
    return EmbeddedBatch(anchors, candidates, torch.arange(b), torch.arange(b))


def guide_table(b: int = 5, seed: int = 1) -> torch.Tensor:
    """Complementary cosines in [-1, 1] with 1 on the diagonal (each text against its own second view)."""
    guide = torch.rand(b, b, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    return guide.fill_diagonal_(1.0)


def reference_dclr(anchors, candidates, guide, noise, phi: float, temperature: float) -> float:
    """The paper's loss in loop form: weight 0 for in-batch negatives with complementary cosine > phi, noise added."""

    def cos(u: np.ndarray, v: np.ndarray) -> float:
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    anchors, candidates, noise = (np.asarray(x.detach(), dtype=np.float64) for x in (anchors, candidates, noise))
    total = 0.0
    for i, a in enumerate(anchors):
        positive = np.exp(cos(a, candidates[i]) / temperature)
        denominator = positive
        for j, c in enumerate(candidates):
            if j != i and guide[i, j] <= phi:
                denominator += np.exp(cos(a, c) / temperature)
        for n in noise:
            denominator += np.exp(cos(a, n) / temperature)
        total += -np.log(positive / denominator)
    return total / len(anchors)


def objective(**params) -> DCLRObjective:
    return build_loss("dclr", **params)


# -- against references --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phi", [0.3, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_matches_the_papers_loss_in_loop_form(phi: float, temperature: float) -> None:
    batch, guide = views(), guide_table()
    noise = torch.randn(7, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    value = objective(phi=phi, temperature=temperature).loss(batch, guide, noise=noise)
    expected = reference_dclr(batch.anchors, batch.candidates, guide.numpy(), noise, phi, temperature)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_phi_one_without_noise_is_infonce() -> None:
    batch = views()
    guide = torch.ones(5, 5, dtype=torch.float64)  # the largest complementary cosine there is: nothing dropped
    value = objective(phi=1.0, noise_times=0).loss(batch, guide)
    assert value.item() == pytest.approx(InfoNCELoss(temperature=0.05)(batch).item(), rel=1e-9)


def test_weights_are_zero_exactly_where_the_complementary_cosine_exceeds_phi() -> None:
    batch, guide = views(), guide_table()
    guide[2, 2] = 1.0
    guide[0, 3] = 0.95  # above phi: dropped
    guide[0, 4] = 0.9  # at phi: kept (the threshold drops cosines *above* phi)
    table = objective(phi=0.9).scores(batch, guide)
    off_target = ~torch.eye(5, dtype=torch.bool)
    assert torch.equal(table.valid[off_target], (guide <= 0.9)[off_target])
    assert table.valid.diagonal().all()  # positives always stay
    assert not table.valid[0, 3] and table.valid[0, 4]


def test_duplicate_texts_are_masked_too() -> None:
    batch = views()
    batch = EmbeddedBatch(batch.anchors, batch.candidates, torch.tensor([0, 1, 0, 3, 4]), torch.tensor([0, 1, 0, 3, 4]))
    table = objective(phi=1.0).scores(batch, torch.zeros(5, 5, dtype=torch.float64))
    assert not table.valid[0, 2] and not table.valid[2, 0] and table.valid[0, 1]


def test_noise_negatives_increase_the_loss() -> None:
    batch, guide = views(), guide_table()
    loss = objective(phi=0.9)
    noise = torch.randn(5, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    without = loss.loss(batch, guide, noise=noise[:0])
    with_noise = loss.loss(batch, guide, noise=noise)
    assert with_noise.item() > without.item()


def test_noise_count_follows_noise_times() -> None:
    batch = views(b=6)
    for times, count in [(0, 0), (1, 6), (2.5, 15)]:
        loss = objective(noise_times=times)
        assert loss.noise_negatives(batch.anchors, loss.scores(batch, guide_table(6))).shape == (count, 8)


def test_gradient_ascent_makes_the_noise_harder() -> None:
    batch, guide = views(), guide_table()
    raw_objective = objective(noise_steps=0)
    refined_objective = objective(noise_steps=4, noise_lr=0.5)
    scores = raw_objective.scores(batch, guide)
    torch.manual_seed(4)
    raw = raw_objective.noise_negatives(batch.anchors, scores)
    torch.manual_seed(4)
    refined = refined_objective.noise_negatives(batch.anchors, scores)
    assert not refined.requires_grad  # detached: the noise is not trained
    # Each normalised step moves a vector by at most noise_lr.
    assert ((refined - raw).norm(dim=1) <= 4 * 0.5 + 1e-6).all()
    raw_loss = raw_objective.loss(batch, guide, noise=raw).item()
    assert refined_objective.loss(batch, guide, noise=refined).item() > raw_loss


def test_gradients_reach_the_embeddings_and_not_the_noise() -> None:
    batch, guide = views(), guide_table()
    torch.manual_seed(0)
    objective(noise_lr=0.1).loss(batch, guide).backward()
    assert torch.isfinite(batch.anchors.grad).all() and batch.anchors.grad.abs().sum() > 0
    assert torch.isfinite(batch.candidates.grad).all()


@pytest.mark.parametrize("case", ["identical", "zeros", "huge_temperature"])
def test_finite_on_adversarial_inputs(case: str) -> None:
    anchors = torch.ones(4, 8, requires_grad=True) if case != "zeros" else torch.zeros(4, 8, requires_grad=True)
    candidates = anchors.detach().clone().requires_grad_(True)
    batch = EmbeddedBatch(anchors, candidates, torch.arange(4), torch.arange(4))
    guide = torch.ones(4, 4) if case == "identical" else torch.zeros(4, 4)
    temperature = 1e6 if case == "huge_temperature" else 0.05
    torch.manual_seed(0)
    value = objective(temperature=temperature, noise_lr=0.1).loss(batch, guide)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(anchors.grad).all() and torch.isfinite(candidates.grad).all()


# -- errors and registration -------------------------------------------------------------------------------------
@pytest.mark.parametrize("phi", [0.0, -0.1, 1.01, 2.0])
def test_phi_outside_zero_one_is_refused(phi: float) -> None:
    with pytest.raises(ConfigError, match=r"phi must be in \(0, 1\]"):
        objective(phi=phi)


@pytest.mark.parametrize(
    "params", [{"noise_times": -1}, {"noise_steps": -1}, {"noise_steps": 1.5}, {"noise_lr": -0.1}, {"temperature": 0.0}]
)
def test_bad_settings(params: dict) -> None:
    with pytest.raises(ConfigError):
        objective(**params)


def test_missing_complementary_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(EmbedkitError, match="nowhere"):
        objective(complementary=str(tmp_path / "nowhere"))


def test_registered() -> None:
    spec = LOSSES.get("dclr")
    assert spec.kinds == (Kind.SENTENCES,) and "Zhou" in spec.reference
    assert spec.parameters() == {
        "temperature": 0.05,
        "phi": 0.9,
        "noise_times": 1.0,
        "noise_steps": 4,
        "noise_lr": 1e-3,
        "complementary": None,
    }


# -- with an encoder -----------------------------------------------------------------------------------------------
def test_forward_before_setup_is_an_error(tiny_model_path: Path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    batch = collate([Example(anchor=s, positive=s) for s in SENTENCES[:4]], Kind.SENTENCES)
    with pytest.raises(ConfigError, match="setup"):
        objective()(encoder, batch)


def test_a_named_complementary_model_is_loaded_frozen(tiny_model_path: Path) -> None:
    loss = objective(complementary=str(tiny_model_path))
    assert loss.complementary is not None
    assert not any(p.requires_grad for p in loss.complementary.parameters())
    batch = collate([Example(anchor=s, positive=s) for s in SENTENCES[:3]], Kind.SENTENCES)
    cosines = loss.complementary_cosines(batch)
    assert cosines.shape == (3, 3) and torch.allclose(cosines.diagonal(), torch.ones(3), atol=1e-5)
    assert cosines.max() <= 1.0  # clamped: rounding above 1 would let phi = 1 drop identical texts


class Interrupt(Exception):
    pass


def interrupt_after_first_step(step: int, metrics: dict) -> None:
    if step == 1:
        raise Interrupt


def test_fit_two_steps_with_a_frozen_copy_and_an_exact_resume(tiny_model_path: Path, tmp_path: Path) -> None:
    examples = Examples([Example(anchor=s, positive=s) for s in SENTENCES], Kind.SENTENCES)

    def settings(folder: str) -> FitSettings:
        return FitSettings(
            output_dir=tmp_path / folder, batch_size=4, lr=1e-3, max_steps=2, save_steps=1, show_progress=False, seed=3
        )

    def start() -> tuple:
        encoder = load_encoder(tiny_model_path, precision="fp32")
        loss = objective(phi=0.5, noise_lr=0.1)
        loss.setup(encoder)  # a fresh process: the copy is taken before fit() loads the checkpoint
        return encoder, loss

    initial = load_encoder(tiny_model_path, precision="fp32").state_dict()
    straight, straight_loss = start()
    result = fit(straight, examples, straight_loss, settings("straight"))
    assert result.steps == 2 and np.isfinite(result.history[-1]["loss"])
    # The encoder moved; its complementary copy stayed at the initial weights.
    assert any(not torch.equal(initial[k], v) for k, v in straight.state_dict().items())
    assert all(torch.equal(initial[k], v) for k, v in straight_loss.complementary.state_dict().items())
    # Frozen: nothing of the complementary model is optimised or checkpointed.
    state = tmp_path / "straight" / "checkpoint" / "loss.safetensors"
    assert not state.exists() or not any(k.startswith("complementary.") for k in load_file(str(state)))

    interrupted, interrupted_loss = start()
    with pytest.raises(Interrupt):
        fit(interrupted, examples, interrupted_loss, settings("resumed"), callbacks=[interrupt_after_first_step])
    resumed, resumed_loss = start()
    fit(resumed, examples, resumed_loss, settings("resumed"))
    assert all(torch.equal(straight.state_dict()[k], v) for k, v in resumed.state_dict().items())


def test_recipe_builds() -> None:
    from embedkit.training.recipe import load_config

    config = load_config(Path(__file__).resolve().parents[3] / "recipes" / "dclr.toml")
    loss = LOSSES.get(config.loss.name).build(**config.loss.params)
    assert isinstance(loss, DCLRObjective) and (loss.phi, loss.noise_times, loss.noise_steps) == (0.9, 1.0, 4)
    assert (config.train.batch_size, config.train.lr) == (128, 3e-5)


def test_runs_under_bf16_autocast(tiny_model_path: Path) -> None:
    encoder = load_encoder(tiny_model_path, precision="bf16").train()
    loss = objective(noise_lr=0.1)
    loss.setup(encoder)
    batch = collate([Example(anchor=s, positive=s) for s in SENTENCES[:4]], Kind.SENTENCES)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss.train()(encoder, batch)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
