"""Plain-text (Markdown) tables of benchmark results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; numbers right-aligned, booleans as PASS / FAIL, None as n/a."""

    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, bool):
            return "PASS" if value else "FAIL"
        if isinstance(value, float):
            return (
                f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
            )
        return str(value)

    text_rows = [[cell(value) for value in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in text_rows]) for i, header in enumerate(headers)]
    numeric = []
    for i in range(len(headers)):
        present = [row[i] for row in rows if row[i] is not None]
        numeric.append(bool(present) and all(_is_number(value) for value in present))
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"]
    lines.append(
        "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, numeric)) + "|"
    )
    for row in text_rows:
        lines.append(
            "| " + " | ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric)) + " |"
        )
    return "\n".join(lines)


def _setting_line(entry: dict[str, Any]) -> str:
    crop = "x".join(str(side) for side in entry.get("crop_size", []))
    return (
        f"backbone {entry.get('backbone')}, batch {entry.get('batch_size')}, {crop}, AMP {entry.get('amp')}"
    )


def _quartiles(values: dict[str, Any]) -> str:
    first, third = values["ratio_quartiles"]
    return f"{first:.3f} - {third:.3f}"


def step_tables(step: dict[str, Any]) -> str:
    parts = []
    for family, entry in step.items():
        rows = [
            [
                name,
                values["median_ms"],
                values["ratio"],
                _quartiles(values),
                values.get("gflops"),
                values.get("flop_ratio"),
            ]
            for name, values in entry["methods"].items()
        ]
        parts.append(f"Training step, {family} ({_setting_line(entry)}), ratio to {entry['baseline']}:")
        headers = ["method", "median ms", "ratio", "per-round ratio IQR", "GFLOP", "FLOP ratio"]
        parts.append(markdown_table(headers, rows))
    return "\n\n".join(parts)


def inference_tables(inference: dict[str, Any]) -> str:
    parts = []
    for family, entry in inference.items():
        rows = [
            [
                name,
                values["median_ms"],
                values["images_per_s"],
                values["ratio"],
                _quartiles(values),
                values.get("gflops"),
                values.get("flop_ratio"),
            ]
            for name, values in entry["methods"].items()
        ]
        parts.append(f"Inference, {family} ({_setting_line(entry)}), time ratio to {entry['baseline']}:")
        headers = ["method", "median ms", "images/s", "time ratio", "per-round ratio IQR"]
        headers += ["GFLOP", "FLOP ratio"]
        parts.append(markdown_table(headers, rows))
    return "\n\n".join(parts)


def memory_tables(memory: dict[str, Any]) -> str:
    parts = []
    for family, entry in memory.items():
        if family == "isolation":
            continue
        rows = [
            [
                name,
                values["peak_mb"],
                values["state_mb"],
                values["step_mb"],
                values["method_mb"],
                values["ratio"],
            ]
            for name, values in entry["methods"].items()
        ]
        kind = next(iter(entry["methods"].values()))["kind"]
        parts.append(
            f"Peak memory of a training step, {family} ({kind}, MiB, {memory['isolation']}), "
            f"ratio of method_mb to {entry['baseline']}:"
        )
        parts.append(
            markdown_table(["method", "peak", "state", "step", "method (state + step)", "ratio"], rows)
        )
    return "\n\n".join(parts)


def sync_tables(sync: dict[str, Any]) -> str:
    parts = []
    for family, entry in sync.items():
        rows = [
            [
                name,
                values["syncs"],
                values["method_specific"],
                ", ".join(f"{op.removeprefix('aten::')} x{count}" for op, count in values["by_op"].items())
                or "-",
            ]
            for name, values in entry["methods"].items()
        ]
        counter = next(iter(entry["methods"].values()))["counter"]
        parts.append(f"Host synchronisations in one training step, {family} (counter: {counter}):")
        parts.append(markdown_table(["method", "syncs", "beyond baseline", "ops"], rows))
    return "\n\n".join(parts)


def _sweep_rows(name: str, sweep: dict[str, Any]) -> list[list[Any]]:
    sizes = ", ".join(str(size) for size in sweep["sizes"])
    times = ", ".join(f"{value:.2f}" for value in sweep["median_ms"])
    return [[name, sweep["variable"], sizes, times, sweep["ratio_last_over_first"], sweep["growth_exponent"]]]


def scaling_tables(scaling: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    for component in ("prototype_learning", "sinkhorn"):
        for sweep in scaling[component].values():
            rows += _sweep_rows(component, sweep)
    rows += _sweep_rows("rca_kmeans_refresh", scaling["rca_kmeans_refresh"])
    rows += _sweep_rows("ppc_loss (fwd+bwd)", scaling["ppc_loss"])
    config = scaling["config"]
    header = (
        f"Component scaling (D={config['dim']}; fixed N={config['base_pixels']}, C={config['base_classes']}, "
        f"K={config['base_prototypes']} unless varied; median of {config['repeats']}):"
    )
    table = markdown_table(["component", "varied", "sizes", "median ms", "last/first", "exponent"], rows)
    return header + "\n\n" + table


def data_table(data: dict[str, Any]) -> str:
    rows = [
        [workers, values["images_per_s"], values["startup_s"]] for workers, values in data["workers"].items()
    ]
    crop = "x".join(str(side) for side in data["crop_size"])
    header = (
        f"Training data loading ({data['root']}, batch {data['batch_size']}, {crop}, "
        f"{data['batches']} batches per round):"
    )
    return header + "\n\n" + markdown_table(["workers", "images/s", "start-up s"], rows)


def targets_table(targets: list[dict[str, Any]]) -> str:
    """The targets with PASS / FAIL; those not applicable (``--quick``) say so instead of a verdict."""
    rows = [
        [
            check["target"],
            check["measured"],
            check["limit"],
            check["met"] if check.get("applicable", True) else "n/a at --quick toy sizes",
        ]
        for check in targets
    ]
    return "Targets (reported, not enforced):\n\n" + markdown_table(
        ["target", "measured", "limit", "result"], rows
    )
