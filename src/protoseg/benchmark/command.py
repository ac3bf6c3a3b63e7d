"""``protoseg benchmark``: what each method costs against its baseline, measured side by side.

    protoseg benchmark                                   # every suite, built-in benchmark, CPU
    protoseg benchmark --quick                           # everything at toy sizes (< 1 min on a CPU)
    protoseg benchmark --suite step sync --json          # some suites, one JSON object on stdout
    protoseg benchmark --preset gpu --device cuda --out gpu.json   # the papers' setting on a GPU

Suites: ``step`` (training step time, ratio to linear / CAM), ``memory`` (peak memory per method,
fresh process each), ``inference`` (images/s), ``sync`` (host synchronisations per step),
``scaling`` (components against C, N, K, memory size, batch; growth exponents), ``data`` (loader
images/s with 0 and 2 workers). Targets are printed as PASS / FAIL and never change the exit status;
with ``--quick`` the timing targets are printed as not applicable (toy sizes say nothing about them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..fields import argument

SUITES = ("step", "memory", "inference", "sync", "scaling", "data")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``protoseg benchmark`` options."""
    from .settings import FAMILY_OF, PRESETS

    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--suite",
        nargs="+",
        choices=("all",) + SUITES,
        default=["all"],
        metavar="SUITE",
        help=f"suites to run: all (default) or some of {', '.join(SUITES)}",
    )
    parser.add_argument(
        "--preset", choices=PRESETS, default="cpu", help="cpu: built-in benchmark (default); gpu: the papers'"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--quick", action="store_true", help="toy sizes and few repeats: a smoke run")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=tuple(FAMILY_OF),
        metavar="METHOD",
        help=f"methods to run (default: all of {', '.join(FAMILY_OF)}); baselines are always added",
    )
    parser.add_argument(
        "--repeats", type=argument(int, minimum=1), help="timed rounds (default: 10, quick: 3)"
    )
    parser.add_argument(
        "--warmup", type=argument(int, minimum=0), help="untimed rounds first (default: 2, quick: 1)"
    )
    parser.add_argument(
        "--batch-size", type=argument(int, minimum=1), help="override train.batch_size of every method"
    )
    parser.add_argument(
        "--crop-size",
        type=argument(int, minimum=1),
        nargs=2,
        metavar=("H", "W"),
        help="override data.crop_size",
    )
    parser.add_argument("--backbone", help="override model.backbone.name of every method")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every method"
    )
    parser.add_argument(
        "--threads",
        type=argument(int, minimum=1),
        help="torch CPU threads (default: torch's, i.e. OMP_NUM_THREADS)",
    )
    parser.add_argument("--data", help="dataset root for the data suite (default: a generated shapes set)")
    parser.add_argument(
        "--memory-in-process",
        action="store_true",
        help="measure memory in this process (approximate; for platforms without fork)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--out", help="also write the JSON results to this file")
    parser.add_argument(
        "--no-progress", action="store_true", help="no 'benchmark: ...' progress lines on stderr"
    )


def _settings(args: argparse.Namespace):
    from ..engine.device import resolve_device
    from .settings import preset_settings

    settings = preset_settings(args.preset, resolve_device(args.device), quick=args.quick)
    overrides = list(args.set)
    if args.batch_size is not None:
        overrides.append(f"train.batch_size={args.batch_size}")
    if args.crop_size is not None:
        overrides.append(f"data.crop_size=[{args.crop_size[0]}, {args.crop_size[1]}]")
    if args.backbone is not None:
        overrides.append(f"model.backbone.name={args.backbone}")
    changes: dict[str, Any] = {"user_overrides": overrides, "threads": args.threads}
    if args.methods:
        changes["methods"] = tuple(args.methods)
    for name in ("repeats", "warmup"):
        value = getattr(args, name)
        if value is not None:
            if value < (1 if name == "repeats" else 0):
                raise ValueError(f"--{name} must be >= {1 if name == 'repeats' else 0}, got {value}")
            changes[name] = value
    settings = dataclasses.replace(settings, **changes)
    for method in settings.methods:  # validate every config up front, before anything is measured
        settings.config(method)
    return settings


PROGRESS = {"enabled": True}


def _progress(message: str) -> None:
    if PROGRESS["enabled"]:
        print(f"benchmark: {message}", file=sys.stderr, flush=True)


def run_suites(
    settings,
    suites: list[str],
    data_root: str | None = None,
    memory_in_process: bool = False,
    quick: bool = False,
) -> dict[str, Any]:
    """Run ``suites`` under ``settings``; returns the results dict (with ``environment`` and ``targets``)."""
    from . import suites as library
    from .targets import evaluate_targets

    if settings.threads:
        torch.set_num_threads(settings.threads)
    results: dict[str, Any] = {"environment": library.environment(settings, quick=quick)}
    pool = library.MethodPool(settings)
    if "step" in suites:
        _progress("training step (interleaved rounds)")
        results["step"] = library.step_suite(pool)
    if "inference" in suites:
        _progress("inference")
        results["inference"] = library.inference_suite(pool)
    if "sync" in suites:
        _progress("host synchronisations")
        results["sync"] = library.sync_suite(pool)
    del pool
    if "memory" in suites:
        _progress("peak memory (one fresh process per method)" if not memory_in_process else "peak memory")
        results["memory"] = library.memory_suite(settings, in_process=memory_in_process)
    if "scaling" in suites:
        _progress("component scaling")
        results["scaling"] = library.scaling_suite(settings)
    if "data" in suites:
        _progress("data loading")
        results["data"] = library.data_suite(settings, data_root)
    results["targets"] = evaluate_targets(results, settings.device.type, quick=quick)
    return results


def format_report(results: dict[str, Any]) -> str:
    """All tables of ``results`` as text."""
    from . import tables

    env = results["environment"]
    parts = [
        f"protoseg benchmark: preset {env['preset']}{' (quick)' if env['quick'] else ''}, "
        f"device {env['device']} ({env['device_name']}), {env['threads']} threads, "
        f"torch {env['torch']}, {env['date']}; "
        f"median of {env['repeats']} interleaved rounds after {env['warmup']} warm-up"
    ]
    formatters = {
        "step": tables.step_tables,
        "inference": tables.inference_tables,
        "memory": tables.memory_tables,
        "sync": tables.sync_tables,
        "scaling": tables.scaling_tables,
        "data": tables.data_table,
    }
    for suite, formatter in formatters.items():
        if suite in results:
            parts.append(formatter(results[suite]))
    parts.append(tables.targets_table(results["targets"]))
    return "\n\n".join(parts)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``protoseg benchmark``; always 0 once measured (targets are not enforced)."""
    from ..files import atomic_write_text

    settings = _settings(args)
    PROGRESS["enabled"] = not args.no_progress
    suites = list(SUITES) if "all" in args.suite else [s for s in SUITES if s in args.suite]
    results = run_suites(
        settings, suites, data_root=args.data, memory_in_process=args.memory_in_process, quick=args.quick
    )
    text = json.dumps(results, indent=1)
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
    print(text if args.json else format_report(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m protoseg.benchmark.command``, ``benchmarks/`` scripts)."""
    parser = argparse.ArgumentParser(prog="protoseg benchmark")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
