"""Process-group set-up for ``torchrun`` (DDP on GPUs with NCCL, on CPU with gloo).

Faults: a rank launched by torchrun ends when torchrun ends (also by ``kill -9``: the rank gets
SIGTERM), and a rank that fails never waits for its peers (``protoseg.cli`` exits it at once, which
breaks its peers' collectives, so they fail too instead of hanging).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
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
    if "TORCHELASTIC_RUN_ID" in os.environ:
        exit_with_parent()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


PR_SET_PDEATHSIG = 1


def exit_with_parent(signal_number: int = signal.SIGTERM) -> bool:
    """Ask Linux to send this process ``signal_number`` when its parent (torchrun) ends, so that killing
    torchrun never leaves orphaned ranks. Returns False where this is not available."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal_number), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent == 1 or os.getppid() != parent:  # the parent ended before the request took effect
        os.kill(os.getpid(), signal_number)
    return True


_CONTROL_GROUP = None


def _control_group():
    """A gloo process group for small CPU messages (the stop flag), whatever the training backend."""
    global _CONTROL_GROUP
    if _CONTROL_GROUP is None:
        _CONTROL_GROUP = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return _CONTROL_GROUP


def any_rank(flag: bool, context: DistributedContext) -> bool:
    """True on every rank when ``flag`` is True on any rank (a CPU all-reduce; no device sync)."""
    if not context.enabled:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_control_group())
    return bool(value.item())


def broadcast_error(message: str | None, context: DistributedContext) -> str | None:
    """Rank 0's ``message`` (an error found on rank 0 only, or None) on every rank."""
    if not context.enabled:
        return message
    box = [message]
    dist.broadcast_object_list(box, src=0, group=_control_group())
    return box[0]


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
    global _CONTROL_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _CONTROL_GROUP = None


def cleanup(context: DistributedContext) -> None:
    if context.enabled:
        close_process_group()
