"""Peak memory of a method's training step, each method in a fresh process so peaks are separable.

CPU: resident set size (RSS) from ``/proc/self/status``. The peak (``VmHWM``) is reset after the
warm-up steps by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0); where that is refused
the process-lifetime peak of ``resource.getrusage`` is used. glibc's dynamic mmap threshold is pinned
(``mallopt``) so that freed activations go back to the system instead of staying resident.
CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.

Reported per method (MiB):

- ``peak_mb``: the peak during the measured steps (RSS, or CUDA bytes allocated);
- ``step_mb``: ``peak_mb`` minus what stayed resident after the warm-up steps: the step's transient
  (activations, gradients, temporaries);
- ``state_mb``: what the method keeps between steps, counted tensor by tensor (parameters, gradients,
  optimiser state, buffers such as prototypes and memories); exact and free of the process's
  constant runtime overhead (allocator arenas, kernel libraries);
- ``method_mb`` = ``state_mb + step_mb``: the method's memory. The ratio to the baseline is taken on
  this number.

Fresh processes come from a ``forkserver`` whose server has imported torch but never run an op (a
plain ``fork`` of a process that has used OpenMP threads can deadlock), so each child starts in
seconds, with a clean allocator.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import queue
import resource
import sys
from typing import Any

import torch
from torch import nn

from .settings import BenchmarkSettings

_MIB = 1024.0 * 1024.0
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 * 1024
_CHILD_TIMEOUT_S = 1200
_POLL_S = 1.0


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def resident_mb() -> float:
    """Current resident set size of this process in MiB (0 where /proc is unavailable)."""
    kib = _status_kib("VmRSS")
    return kib / 1024.0 if kib is not None else 0.0


def tensor_state_mb(modules: list[nn.Module], optimizer: torch.optim.Optimizer) -> float:
    """MiB held by the parameters, their gradients, the buffers and the optimiser state (each storage
    counted once)."""
    tensors = [tensor for module in modules for tensor in (*module.parameters(), *module.buffers())]
    tensors += [p.grad for module in modules for p in module.parameters() if p.grad is not None]
    tensors += [
        v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)
    ]
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[(storage.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values()) / _MIB


def reset_peak_resident() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to the current RSS; False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def peak_resident_mb() -> float:
    """Peak RSS in MiB since the last :func:`reset_peak_resident` (or since the process started)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / _MIB if sys.platform == "darwin" else peak / 1024.0


def pin_malloc_threshold() -> bool:
    """Pin glibc's mmap threshold so freed large blocks leave the RSS (False where not glibc)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def measure_step_memory(method: str, settings: BenchmarkSettings) -> dict[str, Any]:
    """Peak memory of ``settings.memory_steps`` training steps of ``method`` in THIS process.

    Call it in a fresh process (:func:`measure_in_fresh_processes`); in a process that already ran
    other work, memory freed earlier may be reused without showing up in the peak.
    """
    from .steps import MethodBench

    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = settings.device
    cuda = device.type == "cuda"
    if not cuda:
        pin_malloc_threshold()
    bench = MethodBench(method, settings)
    for _ in range(max(1, settings.warmup)):
        bench.train_step()
    modules = [bench.method]
    state = tensor_state_mb(modules, bench.optimizer)
    if cuda:
        torch.cuda.synchronize(device)
        after_warmup = torch.cuda.memory_allocated(device) / _MIB
        torch.cuda.reset_peak_memory_stats(device)
        peak_was_reset = True
    else:
        after_warmup = resident_mb()
        peak_was_reset = reset_peak_resident()
    for _ in range(settings.memory_steps):
        bench.train_step()
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / _MIB
    else:
        peak = peak_resident_mb()
    step = max(0.0, peak - after_warmup)
    return {
        "peak_mb": round(peak, 1),
        "method_mb": round(state + step, 1),
        "state_mb": round(state, 1),
        "step_mb": round(step, 1),
        "kind": "cuda_allocated" if cuda else "rss",
        "peak_reset": peak_was_reset,
    }


def _child(method: str, settings: BenchmarkSettings, results: Any) -> None:
    try:
        results.put((method, measure_step_memory(method, settings)))
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which raises
        results.put((method, {"error": f"{type(error).__name__}: {error}"}))


def _wait_for_result(process: Any, results: Any) -> tuple[str, dict[str, Any]]:
    waited = 0.0
    while waited < _CHILD_TIMEOUT_S:
        try:
            return results.get(timeout=_POLL_S)
        except queue.Empty:
            waited += _POLL_S
            if not process.is_alive():
                try:  # a result written just before the exit
                    return results.get(timeout=_POLL_S)
                except queue.Empty:
                    raise RuntimeError(
                        f"memory probe process exited with code {process.exitcode} before reporting"
                    ) from None
    raise RuntimeError(f"memory probe gave no result within {_CHILD_TIMEOUT_S} s")


def measure_in_fresh_processes(methods: list[str], settings: BenchmarkSettings) -> dict[str, dict[str, Any]]:
    """:func:`measure_step_memory` of every method, each in its own fresh process, one at a time."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "protoseg.benchmark.steps"])
    measured: dict[str, dict[str, Any]] = {}
    for method in methods:
        results = context.Queue()
        process = context.Process(target=_child, args=(method, settings, results), daemon=True)
        process.start()
        try:
            name, values = _wait_for_result(process, results)
        finally:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()
        if "error" in values:
            raise RuntimeError(f"memory probe of '{name}' failed: {values['error']}")
        measured[name] = values
    return measured


def start_process_server() -> None:
    """Start the forkserver now (it imports torch in the background while other suites run)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "protoseg.benchmark.steps"])
    from multiprocessing import forkserver

    forkserver.ensure_running()
