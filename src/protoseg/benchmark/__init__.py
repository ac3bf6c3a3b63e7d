"""protoseg.benchmark: speed, memory and scaling of every method against its baseline, side by side.

The ``protoseg benchmark`` command (:mod:`protoseg.benchmark.command`) runs the suites of
:mod:`protoseg.benchmark.suites`; the building blocks are reusable on their own:
:mod:`~protoseg.benchmark.timing` (interleaved rounds, paired ratios, growth exponents),
:mod:`~protoseg.benchmark.host_sync` (host synchronisation counter),
:mod:`~protoseg.benchmark.memory` (peak memory in fresh processes),
:mod:`~protoseg.benchmark.components` (component scaling sweeps).
"""

from .host_sync import count_host_syncs
from .timing import growth_exponent, interleaved_medians, interleaved_times, median_seconds, paired_ratio

__all__ = [
    "count_host_syncs",
    "growth_exponent",
    "interleaved_medians",
    "interleaved_times",
    "median_seconds",
    "paired_ratio",
]
