"""Processes under ``torchrun``: rank and world size, and gathering embeddings across ranks with gradients.

Contrastive losses see more negatives when every rank scores its own anchors against the candidates of all
ranks (open_clip's ``local_loss`` with ``gather_with_grad``). The gather below is differentiable: in the
backward pass each rank receives the sum over all ranks of the gradient with respect to its own slice, so
that, with DDP averaging the parameter gradients, training equals one process on the concatenated batch.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
from torch import Tensor

from embedkit.types import EmbeddedBatch


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def init_from_environment() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (NCCL on GPUs, gloo on CPUs).

    Returns ``False`` (and does nothing) when the process was not started by ``torchrun``.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather_objects(value: object) -> list:
    """``[value of rank 0, value of rank 1, ...]`` on every rank (``[value]`` in one process)."""
    if not is_distributed():
        return [value]
    values: list = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def gather_to_main(value: object) -> list | None:
    """``[value of rank 0, value of rank 1, ...]`` on rank 0 and ``None`` on the others (``[value]`` in one
    process): for results too large to hold on every rank, such as embeddings of a corpus shard."""
    if not is_distributed():
        return [value]
    values: list | None = [None] * world_size() if is_main_process() else None
    dist.gather_object(value, values, dst=0)
    return values


def broadcast_object(value: object) -> object:
    """Rank 0's ``value`` on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean(value: float) -> float:
    """The mean of a float over ranks (the loss to log)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / world_size()


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``parameters`` over ranks, in one flat buffer.

    Used instead of wrapping the encoder in ``DistributedDataParallel`` because one optimisation step may run
    the encoder several times (gradient caching, objectives with extra passes), which DDP's one-forward,
    one-backward contract does not allow without ``no_sync`` bookkeeping; the averaged gradients are the same.
    """
    if not is_distributed():
        return
    for param in parameters:
        if param.grad is None:  # every rank must reduce the same buffer, even where a part got no gradient
            param.grad = torch.zeros_like(param)
    grads = [p.grad for p in parameters]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


class _GatherWithGrad(torch.autograd.Function):
    """``[n, ...]`` on each rank -> ``[world * n, ...]`` on every rank, rank order; gradients summed back."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, tensor.contiguous())
        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        return torch.cat(pieces)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """All ranks' ``tensor`` concatenated in rank order (every rank must pass the same shape)."""
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_candidates(batch: EmbeddedBatch) -> EmbeddedBatch:
    """Local anchors against the candidates of every rank; each row's target moves to its rank's slice.

    Candidate group ids (stable text hashes) are gathered too, so duplicate texts are masked across ranks.
    """
    if not is_distributed():
        return batch
    return dataclasses.replace(
        batch,
        candidates=gather_with_grad(batch.candidates),
        candidate_groups=_gather_ids(batch.candidate_groups),
        target_offset=rank() * batch.candidates.shape[0],
        anchor_pool=gather_with_grad(batch.anchors),
        anchor_pool_groups=_gather_ids(batch.anchor_groups),
        anchor_offset=rank() * batch.anchors.shape[0],
    )


def _gather_ids(ids: Tensor) -> Tensor:
    pieces = [torch.empty_like(ids) for _ in range(world_size())]
    dist.all_gather(pieces, ids.contiguous())
    return torch.cat(pieces)
