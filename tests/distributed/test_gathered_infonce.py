"""Gathered InfoNCE-family losses under 2 and 3 gloo processes equal one process on the concatenated batch.

Covered: InfoNCE (one-sided and symmetric), InfoNCE through filter steps (margin, ceiling, top-k), debiased
InfoNCE, GISTEmbed's guided table (the guide's embeddings gathered like the model's), and Matryoshka cuts of
symmetric filtered InfoNCE and of GISTEmbed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from ranks import run_on_ranks

from embedkit import distributed
from embedkit.encoders import build_tiny_model
from embedkit.losses import build_loss, matryoshka
from embedkit.losses.infonce import info_nce_from_scores
from embedkit.types import EmbeddedBatch

B, N_NEG, D = 4, 1, 8


def full_batch(
    world: int, duplicate: bool, seed: int = 11
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``world`` local batches concatenated rank by rank: anchors ``[W*B, D]``, candidates ``[W*C, D]``."""
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.randn(world * B, D, generator=gen, dtype=torch.float64)
    candidates = torch.randn(world * B * (1 + N_NEG), D, generator=gen, dtype=torch.float64)
    anchor_ids = torch.arange(world * B)
    candidate_ids = torch.arange(world * B * (1 + N_NEG)) + 1000
    if duplicate:  # rank 1's first negative has the text of rank 0's first positive
        candidate_ids[B * (1 + N_NEG) + B] = candidate_ids[0]
    return anchors, candidates, anchor_ids, candidate_ids


def local_slices(world: int, rank: int, duplicate: bool, seed: int = 11) -> EmbeddedBatch:
    anchors, candidates, anchor_ids, candidate_ids = full_batch(world, duplicate, seed)
    c = B * (1 + N_NEG)
    return EmbeddedBatch(
        anchors[rank * B : (rank + 1) * B].clone().requires_grad_(),
        candidates[rank * c : (rank + 1) * c].clone().requires_grad_(),
        anchor_ids[rank * B : (rank + 1) * B],
        candidate_ids[rank * c : (rank + 1) * c],
    )


GUIDE_SEED = 12  # the guide's embeddings: other vectors with the same texts (group ids)
FILTERS = [{"name": "margin", "margin": 0.1, "mode": "relative"}, {"name": "ceiling", "max_score": 0.5},
           {"name": "top-k", "k": 3}]
MATRYOSHKA_DIMS = (D, 4, 2)


def losses(guide: str) -> dict[str, Callable[[EmbeddedBatch, EmbeddedBatch], torch.Tensor]]:
    """``loss(embedded, guided) -> scalar`` of every case; only GISTEmbed reads the guide's embeddings."""
    plain = {
        "infonce": build_loss("infonce", temperature=0.1),
        "infonce-symmetric": build_loss("infonce", temperature=0.1, symmetric=True),
        "infonce-filtered": build_loss("infonce", temperature=0.1, filters=FILTERS),
        "debiased-infonce": build_loss("debiased-infonce", temperature=0.5, tau_plus=0.1),
        "matryoshka-infonce": matryoshka(build_loss("infonce", temperature=0.1, symmetric=True, filters=FILTERS),
                                         MATRYOSHKA_DIMS, (1.0, 0.5, 2.0)),
    }
    cases = {name: (lambda embedded, guided, loss=loss: loss(embedded)) for name, loss in plain.items()}
    gist = build_loss("gist", guide=guide, temperature=0.1, margin=0.05)
    cases["gist"] = lambda embedded, guided: info_nce_from_scores(gist.scores(embedded, guided), gist.temperature)
    cases["matryoshka-gist"] = matryoshka(gist, MATRYOSHKA_DIMS).guided_loss
    return cases


def local_view(batch: EmbeddedBatch, parts: list[EmbeddedBatch], rank: int) -> EmbeddedBatch:
    """Rank ``rank``'s anchors against the candidates of all ``parts``, as the gather lays them out."""
    c = parts[0].candidates.shape[0]
    return EmbeddedBatch(
        batch.anchors[rank * B : (rank + 1) * B], batch.candidates, batch.anchor_groups[rank * B : (rank + 1) * B],
        batch.candidate_groups, target_offset=rank * c, anchor_pool=batch.anchors,
        anchor_pool_groups=batch.anchor_groups, anchor_offset=rank * B,
    )


def concatenated(parts: list[EmbeddedBatch]) -> EmbeddedBatch:
    return EmbeddedBatch(
        torch.cat([p.anchors for p in parts]), torch.cat([p.candidates for p in parts]),
        torch.cat([p.anchor_groups for p in parts]), torch.cat([p.candidate_groups for p in parts]),
    )


def single_process(world: int, loss: Callable, duplicate: bool):
    """The reference: one process, the concatenated batch, candidates ordered as the gather orders them (each
    rank's positives then its negatives) so that every row keeps the same candidates; the loss is the mean
    of each rank's rows' loss."""
    parts = [local_slices(world, r, duplicate) for r in range(world)]
    guides = [local_slices(world, r, duplicate, GUIDE_SEED) for r in range(world)]
    batch, guided = concatenated(parts), concatenated(guides)
    value = sum(loss(local_view(batch, parts, r), local_view(guided, guides, r)) for r in range(world)) / world
    value.backward()
    return value.detach(), [p.anchors.grad for p in parts], [p.candidates.grad for p in parts]


def worker(rank: int, world: int, guide: str, duplicate: bool) -> dict[str, tuple[float, torch.Tensor, torch.Tensor]]:
    results = {}
    for name, loss in losses(guide).items():
        batch = local_slices(world, rank, duplicate)
        guided = distributed.gather_candidates(local_slices(world, rank, duplicate, GUIDE_SEED))
        value = loss(distributed.gather_candidates(batch), guided)
        value.backward()
        # DDP-style averaging of what would be parameter gradients: the embeddings stand in for parameters.
        results[name] = (value.item(), batch.anchors.grad / world, batch.candidates.grad / world)
    return results


@pytest.fixture(scope="module")
def guide(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("guide") / "model", ["the cat sat", "a dog runs"], seed=2))


WORLDS = (2, 3)
DUPLICATE = True


@pytest.fixture(scope="module")
def gathered(tmp_path_factory, guide: str) -> dict[int, list]:
    """Every rank's results for each world size, from one set of processes."""
    return run_on_ranks(worker, WORLDS, tmp_path_factory.mktemp("ranks"), guide, DUPLICATE)


@pytest.mark.parametrize("world", WORLDS)
def test_gathered_losses_and_gradients_equal_one_process(gathered: dict[int, list], guide: str, world: int) -> None:
    duplicate, results = DUPLICATE, gathered[world]
    for name, loss in losses(guide).items():
        value, anchor_grads, candidate_grads = single_process(world, loss, duplicate)
        # The mean of the ranks' losses is the one-process loss; both agree to float32 round-off (the losses reduce in
        # float32).
        assert sum(results[r][name][0] for r in range(world)) / world == pytest.approx(value.item(), rel=1e-6), name
        for rank in range(world):
            _, anchor_grad, candidate_grad = results[rank][name]
            torch.testing.assert_close(anchor_grad, anchor_grads[rank], rtol=1e-4, atol=1e-7, msg=name)
            torch.testing.assert_close(candidate_grad, candidate_grads[rank], rtol=1e-4, atol=1e-7, msg=name)
