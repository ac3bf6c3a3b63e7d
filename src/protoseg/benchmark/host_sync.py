"""Count the host synchronisations of one call (e.g. one training step).

- CPU: the ``torch.profiler`` trace of the call; an op counts when its name is one of
  :data:`HOST_SYNC_OPS` (``.item()``, ``bool(tensor)``, ``.nonzero()``, boolean-mask indexing,
  one-argument ``torch.where``, ``masked_select``, ``unique``, ``torch.equal``) and no enclosing op is
  (``bool(t)`` records ``is_nonzero > item > _local_scalar_dense``: one synchronisation).
  ``.tolist()``, ``.cpu()`` and ``.numpy()`` copy without a dispatched op and are not seen on CPU.
- CUDA: the warnings of ``torch.cuda.set_sync_debug_mode("warn")``, one per synchronising operation
  (any kind, ``.tolist()`` and device-to-host copies included); the profiler's op counts are reported
  beside them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

HOST_SYNC_OPS = frozenset(
    {
        "aten::item",
        "aten::_local_scalar_dense",
        "aten::is_nonzero",
        "aten::nonzero",
        "aten::masked_select",
        "aten::_unique2",
        "aten::unique_dim",
        "aten::unique_consecutive",
        "aten::equal",
    }
)
_CUDA_SYNC_WARNING = "synchronizing"


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence the profiler's native start/stop log lines (written to file descriptor 2)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _inside_counted_op(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in HOST_SYNC_OPS:
            return True
        parent = parent.cpu_parent
    return False


def profiled_sync_ops(function: Callable[[], object]) -> Counter:
    """Outermost host-synchronising ops of one call of ``function``, by op name (CPU profiler trace)."""
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU]) as trace:
        function()
    return Counter(
        event.name
        for event in trace.events()
        if event.name in HOST_SYNC_OPS and not _inside_counted_op(event)
    )


def cuda_sync_warnings(function: Callable[[], object]) -> int:
    """Synchronising CUDA operations of one call, as counted by the CUDA sync debug mode."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            function()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum(_CUDA_SYNC_WARNING in str(warning.message) for warning in caught)


def count_host_syncs(function: Callable[[], object], device: torch.device) -> dict[str, Any]:
    """Host synchronisations of one call of ``function`` on ``device``.

    Returns ``{"syncs": int, "by_op": {op name: count}, "counter": "profiler" | "cuda_sync_debug"}``;
    on CUDA ``syncs`` comes from the sync debug mode and ``by_op`` from a second, profiled call.
    """
    by_op = profiled_sync_ops(function)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        syncs = cuda_sync_warnings(function)
        torch.cuda.synchronize(device)
        counter = "cuda_sync_debug"
    else:
        syncs = sum(by_op.values())
        counter = "profiler"
    return {"syncs": int(syncs), "by_op": dict(sorted(by_op.items())), "counter": counter}
