"""Process-group set-up for ``torchrun`` (DDP on GPUs with NCCL, on CPU with gloo)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistributedContext:
    """Initialise the default process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def broadcast_buffers(module: torch.nn.Module, context: DistributedContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics, prototypes): before a validation, so that
    every rank evaluates the model rank 0 saves (BatchNorm statistics drift apart per rank without
    SyncBN)."""
    if context.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def gather_objects(value: object, context: DistributedContext) -> list:
    """``[value of rank 0, value of rank 1, ...]`` on every rank (``[value]`` without DDP)."""
    if not context.enabled:
        return [value]
    gathered: list = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def close_process_group() -> None:
    """Tear the default process group down on all ranks together: a barrier, then
    ``destroy_process_group``. Without the barrier, a gloo rank whose peer had already torn down
    could hang in ``destroy_process_group`` (torch 2.4.1: 2 of 6 two-rank test runs)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def cleanup(context: DistributedContext) -> None:
    if context.enabled:
        close_process_group()
