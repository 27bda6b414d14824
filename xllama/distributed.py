"""Data parallelism for inference: split work across the processes of `accelerate launch` / `torchrun`.

Evaluation, alignment and validation are embarrassingly parallel: each process takes every world-th unit of
work (a batch of the length-sorted plan), and the results are gathered back. With one process every function
here is a no-op, so callers need no branch. The process group is the one accelerate sets up (``PartialState``:
NCCL on GPUs, gloo on CPUs) from the launcher's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR).
"""

from __future__ import annotations

import os
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def launched_world_size() -> int:
    """The number of processes the launcher started (1 when run directly)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_distributed() -> tuple[int, int]:
    """Join the launcher's process group (once) and return (rank, world size); (0, 1) when run directly.

    accelerate's PartialState picks the backend (NCCL with one GPU per process, gloo on CPU) and binds each
    process to its own GPU (LOCAL_RANK), which :func:`local_device` then reports.
    """
    if launched_world_size() > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            from accelerate import PartialState

            PartialState()
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process in the current process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def local_device() -> str | None:
    """``cuda:<LOCAL_RANK>`` in a multi-process run on GPUs, so that each process loads the model on its own
    device; None otherwise (the caller's default applies)."""
    import torch

    if launched_world_size() > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


def shard(items: Sequence[T]) -> list[T]:
    """This process's share: items rank, rank + world, ... (round robin keeps long and short batches mixed)."""
    rank, world = rank_and_world()
    return list(items[rank::world])


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process; ``[obj]`` with one process."""
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process."""
    rank, world = rank_and_world()
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj if rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if rank_and_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()
