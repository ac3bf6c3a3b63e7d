"""The benchmark suites: each returns a JSON-ready dict of measured numbers and ratios.

Ratios are computed from the reported per-round times (``times_ms``), so anyone can recompute them:
a method's ratio is the median over rounds of its time divided by the baseline's time of the same
round (:func:`~protoseg.benchmark.timing.paired_ratio`).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from ..methods import BASELINES
from .components import component_scaling
from .data_loading import loader_throughput
from .flops import count_flops
from .host_sync import count_host_syncs
from .memory import measure_in_fresh_processes, measure_step_memory
from .settings import METHODS_BY_FAMILY, BenchmarkSettings
from .steps import MethodBench
from .timing import interleaved_times, milliseconds, paired_ratio, paired_ratio_quartiles


class MethodPool:
    """The methods of each family, built once and shared by the step, inference and sync suites."""

    def __init__(self, settings: BenchmarkSettings) -> None:
        self.settings = settings
        self._benches: dict[str, dict[str, MethodBench]] = {}

    def family(self, family: str) -> dict[str, MethodBench]:
        if family not in self._benches:
            self._benches[family] = {
                method: MethodBench(method, self.settings) for method in self.settings.methods_of(family)
            }
        return self._benches[family]

    def families(self) -> list[str]:
        return [family for family in METHODS_BY_FAMILY if self.settings.methods_of(family)]


def compare_times(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, Any]]:
    """Per method: ``median_ms``, ``times_ms`` (per round), ``ratio`` to ``baseline`` (paired) and
    ``ratio_quartiles`` (first and third quartiles of the per-round ratios)."""
    reported = {name: milliseconds(values) for name, values in times.items()}
    results = {}
    for name, values in reported.items():
        first, third = paired_ratio_quartiles(values, reported[baseline])
        results[name] = {
            "median_ms": round(statistics.median(values), 3),
            "ratio": round(paired_ratio(values, reported[baseline]), 4),
            "ratio_quartiles": [round(first, 4), round(third, 4)],
            "times_ms": values,
        }
    return results


def _family_settings(bench: MethodBench) -> dict[str, Any]:
    cfg = bench.cfg
    return {
        "backbone": cfg.model.backbone.name,
        "batch_size": bench.batch_size,
        "crop_size": list(cfg.data.crop_size),
        "amp": str(bench.amp_dtype).removeprefix("torch.") if bench.use_amp else False,
    }


def add_flops(methods: dict[str, dict[str, Any]], flops: dict[str, int], baseline: str) -> None:
    """Add ``gflops`` and ``flop_ratio`` (to ``baseline``) to each method's entry of ``methods``."""
    for name, values in methods.items():
        values["gflops"] = round(flops[name] / 1e9, 6)
        values["flop_ratio"] = round(flops[name] / flops[baseline], 4) if flops[baseline] else None


def step_suite(pool: MethodPool) -> dict[str, Any]:
    """Training step time of every method against its family's baseline, in interleaved rounds, and
    each method's step FLOPs and FLOP ratio (forward and backward, :func:`step_flops`)."""
    settings = pool.settings
    results: dict[str, Any] = {}
    for family in pool.families():
        benches = pool.family(family)
        steps = {name: bench.train_step for name, bench in benches.items()}
        times = interleaved_times(steps, settings.device, settings.warmup, settings.repeats)
        baseline = BASELINES[family]
        methods = compare_times(times, baseline)
        add_flops(methods, {name: step_flops(bench) for name, bench in benches.items()}, baseline)
        results[family] = {"baseline": baseline, **_family_settings(benches[baseline]), "methods": methods}
    return results


def step_flops(bench: MethodBench) -> int:
    """Floating-point operations of one training step (matmuls and convolutions of the forward and the
    backward, :func:`~protoseg.benchmark.flops.count_flops`): one more step of the bench."""
    return count_flops(bench.train_step)


def inference_flops(bench: MethodBench) -> int:
    """Floating-point operations of one inference call on the bench's batch (matmuls and convolutions,
    :func:`~protoseg.benchmark.flops.count_flops`): what the architecture costs, whatever the device.

    Counted under ``no_grad``: the same ops as ``infer``'s ``inference_mode``."""
    with torch.no_grad():
        return count_flops(bench.inference_forward)


def inference_suite(pool: MethodPool) -> dict[str, Any]:
    """Inference time and images/s of every method (``predict`` / CAMs), against the baseline, and
    each method's FLOPs and FLOP ratio (the time ratio a device running every op at the same
    efficiency would show)."""
    settings = pool.settings
    results: dict[str, Any] = {}
    for family in pool.families():
        benches = pool.family(family)
        calls = {name: bench.infer for name, bench in benches.items()}
        times = interleaved_times(calls, settings.device, settings.warmup, settings.repeats)
        baseline = BASELINES[family]
        methods = compare_times(times, baseline)
        for name, values in methods.items():
            values["images_per_s"] = round(benches[name].batch_size / (values["median_ms"] / 1000.0), 2)
        add_flops(methods, {name: inference_flops(bench) for name, bench in benches.items()}, baseline)
        results[family] = {"baseline": baseline, **_family_settings(benches[baseline]), "methods": methods}
    return results


def sync_suite(pool: MethodPool) -> dict[str, Any]:
    """Host synchronisations in one training step of every method; ``method_specific`` = the method's
    count minus its baseline's (what the method itself adds over optimiser, AMP and baseline)."""
    settings = pool.settings
    results: dict[str, Any] = {}
    for family in pool.families():
        benches = pool.family(family)
        for bench in benches.values():
            bench.train_step()  # lazy initialisations are not part of the step
        counts = {
            name: count_host_syncs(bench.train_step, settings.device) for name, bench in benches.items()
        }
        baseline = BASELINES[family]
        for values in counts.values():
            values["method_specific"] = values["syncs"] - counts[baseline]["syncs"]
        results[family] = {"baseline": baseline, "methods": counts}
    return results


def memory_suite(settings: BenchmarkSettings, in_process: bool = False) -> dict[str, Any]:
    """Peak memory of every method's training step (see :mod:`protoseg.benchmark.memory`), each in a
    fresh process unless ``in_process`` (approximate: memory freed by one method can hide another's)."""
    results: dict[str, Any] = {"isolation": "in_process" if in_process else "fresh_process"}
    for family in METHODS_BY_FAMILY:
        methods = settings.methods_of(family)
        if not methods:
            continue
        if in_process:
            measured = {method: measure_step_memory(method, settings) for method in methods}
        else:
            measured = measure_in_fresh_processes(methods, settings)
        baseline = BASELINES[family]
        base = measured[baseline]["method_mb"]
        for values in measured.values():
            values["ratio"] = round(values["method_mb"] / base, 4) if base > 0 else None
        results[family] = {"baseline": baseline, "methods": measured}
    return results


def scaling_suite(settings: BenchmarkSettings) -> dict[str, Any]:
    """Component scaling sweeps (see :mod:`protoseg.benchmark.components`)."""
    return component_scaling(settings.scaling, settings.device)


def data_suite(settings: BenchmarkSettings, root: str | None) -> dict[str, Any]:
    """Training loader images/s for ``settings.data_workers`` (the linear baseline's data settings)."""
    cfg = settings.config(BASELINES["segmentation"])
    return loader_throughput(cfg, root, settings.data_workers, settings.data_batches, settings.data_rounds)


def environment(settings: BenchmarkSettings, quick: bool) -> dict[str, Any]:
    """Machine, versions and run settings, for the report's header."""
    import datetime
    import os
    import platform

    device = settings.device
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()
    return {
        "date": datetime.date.today().isoformat(),
        "device": str(device),
        "device_name": device_name,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "preset": settings.preset,
        "quick": quick,
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "num_classes": settings.num_classes,
        "wsss_num_classes": settings.wsss_num_classes,
        "overrides": settings.user_overrides,
        "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"),
    }


def _cpu_model() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
