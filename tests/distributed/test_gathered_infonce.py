"""Gathered InfoNCE under 2 and 3 gloo processes equals one process on the concatenated batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from embedkit import distributed
from embedkit.losses import build_loss
from embedkit.types import EmbeddedBatch

B, N_NEG, D = 4, 1, 8


def full_batch(world: int, duplicate: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``world`` local batches concatenated rank by rank: anchors ``[W*B, D]``, candidates ``[W*C, D]``."""
    gen = torch.Generator().manual_seed(11)
    anchors = torch.randn(world * B, D, generator=gen, dtype=torch.float64)
    candidates = torch.randn(world * B * (1 + N_NEG), D, generator=gen, dtype=torch.float64)
    anchor_ids = torch.arange(world * B)
    candidate_ids = torch.arange(world * B * (1 + N_NEG)) + 1000
    if duplicate:  # rank 1's first negative has the text of rank 0's first positive
        candidate_ids[B * (1 + N_NEG) + B] = candidate_ids[0]
    return anchors, candidates, anchor_ids, candidate_ids


def local_slices(world: int, rank: int, duplicate: bool) -> EmbeddedBatch:
    anchors, candidates, anchor_ids, candidate_ids = full_batch(world, duplicate)
    c = B * (1 + N_NEG)
    return EmbeddedBatch(
        anchors[rank * B : (rank + 1) * B].clone().requires_grad_(),
        candidates[rank * c : (rank + 1) * c].clone().requires_grad_(),
        anchor_ids[rank * B : (rank + 1) * B],
        candidate_ids[rank * c : (rank + 1) * c],
    )


def single_process(world: int, symmetric: bool, duplicate: bool):
    """The reference: one process, the concatenated batch, candidates reordered as the gather orders them
    (each rank's positives then its negatives) so that every row keeps the same candidates."""
    loss = build_loss("infonce", temperature=0.1, symmetric=symmetric)
    parts = [local_slices(world, r, duplicate) for r in range(world)]
    anchors = torch.cat([p.anchors for p in parts])
    candidates = torch.cat([p.candidates for p in parts])
    # rows' targets: rank r row i -> column r*C + i; the reference builds that table directly
    batch = EmbeddedBatch(
        anchors, candidates, torch.cat([p.anchor_groups for p in parts]), torch.cat([p.candidate_groups for p in parts])
    )
    c = B * (1 + N_NEG)
    value = 0.0
    for r in range(world):
        local = EmbeddedBatch(
            anchors[r * B : (r + 1) * B], candidates, batch.anchor_groups[r * B : (r + 1) * B], batch.candidate_groups,
            target_offset=r * c, anchor_pool=anchors, anchor_pool_groups=batch.anchor_groups, anchor_offset=r * B,
        )
        value = value + loss(local) / world
    value.backward()
    return value.detach(), [p.anchors.grad for p in parts], [p.candidates.grad for p in parts]


def worker(rank: int, world: int, init_file: str, symmetric: bool, duplicate: bool, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        batch = local_slices(world, rank, duplicate)
        value = build_loss("infonce", temperature=0.1, symmetric=symmetric)(distributed.gather_candidates(batch))
        value.backward()
        # DDP-style averaging of what would be parameter gradients: the embeddings stand in for parameters.
        # numpy, not tensors: shared tensor memory would not outlive this process
        queue.put((rank, value.item(), (batch.anchors.grad / world).numpy(), (batch.candidates.grad / world).numpy()))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gathered_loss_and_gradients_equal_one_process(tmp_path, world: int, symmetric: bool) -> None:
    duplicate = True
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(worker, args=(world, str(tmp_path / "init"), symmetric, duplicate, queue), nprocs=world,
                       start_method="spawn")
    results = sorted(queue.get() for _ in range(world))
    value, anchor_grads, candidate_grads = single_process(world, symmetric, duplicate)

    # The mean of the ranks' losses is the one-process loss; gradients agree to float32 round-off.
    assert sum(r[1] for r in results) / world == pytest.approx(value.item(), rel=1e-6)
    for rank, _, anchor_grad, candidate_grad in results:
        torch.testing.assert_close(torch.from_numpy(anchor_grad), anchor_grads[rank], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(torch.from_numpy(candidate_grad), candidate_grads[rank], rtol=1e-4, atol=1e-7)
