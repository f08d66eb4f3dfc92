"""Running a function on gloo process groups, as ``torchrun`` would, and collecting what each rank returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_on_ranks(worker: Callable[..., Any], worlds: Sequence[int], folder: Path, *args: Any) -> dict[int, list[Any]]:
    """``worker(rank, world, *args)`` on a gloo group of each size in ``worlds``, one size after the other.

    One set of ``max(worlds)`` spawned processes serves every size, the ranks below ``world`` forming each group:
    starting a process and importing torch costs more than these tests' work. ``worker`` must be importable (a
    module-level function) and return tensors, numbers, strings, or lists, tuples and dicts of them.

    Returns:
        For each size, what each rank returned, in rank order. A rank that raises fails the call.
    """
    folder.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_as_rank, args=(worker, tuple(worlds), str(folder), args), nprocs=max(worlds),
                       start_method="spawn")
    return {world: [torch.load(folder / f"{world}-{rank}.pt", weights_only=True) for rank in range(world)]
            for world in worlds}


def _as_rank(rank: int, worker: Callable[..., Any], worlds: tuple[int, ...], folder: str, args: tuple) -> None:
    for world in worlds:
        if rank < world:
            # A file, not a queue: a process whose results outgrow the pipe's buffer would block at exit.
            torch.save(_in_group(rank, world, folder, worker, args), Path(folder) / f"{world}-{rank}.pt")


def _in_group(rank: int, world: int, folder: str, worker: Callable[..., Any], args: tuple) -> Any:
    dist.init_process_group("gloo", init_method=f"file://{folder}/init-{world}", rank=rank, world_size=world)
    try:
        return worker(rank, world, *args)
    finally:
        dist.destroy_process_group()
