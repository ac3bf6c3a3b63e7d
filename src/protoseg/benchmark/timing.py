"""Timing primitives shared by every benchmark: interleaved repeats, medians, paired ratios, growth.

Methods are timed side by side in ROUNDS: one call of every function per round, the order rotated by
one each round, so that a swing in machine load hits every method alike. On CUDA a call is timed with
CUDA events (device time between the call's first and last kernel launch points); on CPU with
``time.perf_counter``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """``names`` rotated left by ``round_index`` (round r starts with function r mod n)."""
    shift = round_index % len(names) if names else 0
    return list(names[shift:]) + list(names[:shift])


def interleaved_times(
    functions: Mapping[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds of ``repeats`` calls of every function, measured in interleaved rounds.

    ``warmup`` untimed rounds come first. Entry ``r`` of each list is the function's call in round
    ``r``, so lists of different functions pair up by round (see :func:`paired_ratio`).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    names = list(functions)
    for round_index in range(warmup):
        for name in rotated(names, round_index):
            functions[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    use_events = device.type == "cuda"
    for round_index in range(repeats):
        events = {}
        for name in rotated(names, round_index):
            if use_events:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                functions[name]()
                end.record()
                events[name] = (start, end)
            else:
                start_time = time.perf_counter()
                functions[name]()
                times[name].append(time.perf_counter() - start_time)
        if use_events:
            synchronize(device)
            for name, (start, end) in events.items():
                times[name].append(start.elapsed_time(end) / 1000.0)
    return times


def interleaved_medians(
    functions: Mapping[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    """Median seconds of every function over interleaved rounds (see :func:`interleaved_times`)."""
    times = interleaved_times(functions, device, warmup, repeats)
    return {name: statistics.median(values) for name, values in times.items()}


def median_seconds(
    function: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 5
) -> float:
    """Median seconds of one function over ``repeats`` calls after ``warmup`` untimed ones."""
    return interleaved_medians({"function": function}, device, warmup, repeats)["function"]


def paired_ratio(times: Sequence[float], baseline_times: Sequence[float]) -> float:
    """Median over rounds of ``times[r] / baseline_times[r]``: each method against the baseline call
    of the same round, so that load changes between rounds cancel."""
    if len(times) != len(baseline_times) or not times:
        raise ValueError(
            f"paired_ratio needs two equally long non-empty lists, got {len(times)} and {len(baseline_times)}"
        )
    return statistics.median(value / baseline for value, baseline in zip(times, baseline_times))


def paired_ratio_quartiles(times: Sequence[float], baseline_times: Sequence[float]) -> tuple[float, float]:
    """First and third quartiles of the per-round ratios ``times[r] / baseline_times[r]``: the spread
    that tells whether a ratio's distance from a target is more than the machine's noise."""
    ratios = [value / baseline for value, baseline in zip(times, baseline_times)]
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    first, _, third = statistics.quantiles(ratios, n=4, method="inclusive")
    return first, third


def growth_exponent(sizes: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope of ``log(seconds)`` against ``log(size)``: time ~ size^exponent.

    0 = flat, 1 = linear, 2 = quadratic.
    """
    if len(sizes) != len(seconds) or len(sizes) < 2:
        raise ValueError(
            f"growth_exponent needs >= 2 (size, time) pairs, got {len(sizes)} and {len(seconds)}"
        )
    if min(sizes) <= 0 or min(seconds) <= 0:
        raise ValueError("growth_exponent needs positive sizes and times")
    xs = [math.log(size) for size in sizes]
    ys = [math.log(value) for value in seconds]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        raise ValueError(f"growth_exponent needs at least two different sizes, got {list(sizes)}")
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread


def milliseconds(seconds: Sequence[float]) -> list[float]:
    """Seconds -> milliseconds, rounded to microseconds (JSON-friendly)."""
    return [round(value * 1000.0, 3) for value in seconds]
