"""Training curves from a run's ``metrics.jsonl`` and per-class IoU bars from an evaluation JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .canvas import new_figure

CURVE_PANEL_INCHES = (4.0, 2.8)
CURVE_COLUMNS = 3
TITLE_INCHES = 0.5
BAR_INCHES_PER_CLASS = 0.3
BAR_WIDTH_INCHES = 8.0
BAR_EXTRA_INCHES = 1.3
NOT_LOSS_KEYS = ("split", "iteration", "lr", "seconds_per_iter")
VAL_KEYS = ("mIoU", "mAcc", "aAcc")


def read_metrics_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (one JSON object per line); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error})") from None
        if not isinstance(record, dict) or "iteration" not in record:
            raise ValueError(f"{path}, line {number}: a record needs an 'iteration'")
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def _series(records: list[dict[str, Any]], split: str, key: str) -> tuple[list[int], list[float]]:
    chosen = [r for r in records if r.get("split", "train") == split and isinstance(r.get(key), (int, float))]
    return [r["iteration"] for r in chosen], [float(r[key]) for r in chosen]


def loss_terms(records: list[dict[str, Any]]) -> list[str]:
    """Numeric keys of the training records other than iteration / lr / timing: ``loss`` first."""
    keys: list[str] = []
    for record in records:
        if record.get("split", "train") != "train":
            continue
        for key, value in record.items():
            if key not in NOT_LOSS_KEYS and isinstance(value, (int, float)) and key not in keys:
                keys.append(key)
    return sorted(keys, key=lambda key: (key != "loss", key))


def curve_panels(records: list[dict[str, Any]]) -> list[str]:
    """Panel names in drawing order: each loss term, ``lr``, ``val``, ``seconds_per_iter``."""
    return [*loss_terms(records), "lr", "val", "seconds_per_iter"]


def curves_figure_inches(num_panels: int) -> tuple[float, float]:
    rows = math.ceil(num_panels / CURVE_COLUMNS)
    return CURVE_COLUMNS * CURVE_PANEL_INCHES[0], rows * CURVE_PANEL_INCHES[1] + TITLE_INCHES


def draw_curves(records: list[dict[str, Any]], title: str = "") -> Figure:
    """A grid with one panel per loss term, the learning rate, the validation metrics and the speed.

    Axes are labelled with their panel name (:func:`curve_panels`) for programmatic checks.
    """
    panels = curve_panels(records)
    figure = new_figure(*curves_figure_inches(len(panels)))
    rows = math.ceil(len(panels) / CURVE_COLUMNS)
    grid = figure.subplots(rows, CURVE_COLUMNS, squeeze=False).reshape(-1)
    last_iteration = max(int(record["iteration"]) for record in records)
    for axes, panel in zip(grid, panels):
        axes.set_label(panel)
        axes.set_xlim(0, max(1, last_iteration) * 1.02)
        axes.grid(True, alpha=0.3)
        axes.set_xlabel("iteration")
        if panel == "val":
            drawn = False
            for key in VAL_KEYS:
                steps, values = _series(records, "val", key)
                if steps:
                    axes.plot(steps, values, marker="o", label=key)
                    drawn = True
            axes.set_title("validation (%)", fontsize=10)
            if drawn:
                axes.legend(fontsize=8)
            else:
                axes.text(
                    0.5, 0.5, "no validation records", ha="center", va="center", transform=axes.transAxes
                )
            continue
        steps, values = _series(records, "train", panel)
        axes.plot(steps, values, marker="." if len(steps) < 30 else None)
        names = {"lr": "learning rate", "seconds_per_iter": "seconds per iteration"}
        axes.set_title(
            names.get(panel, f"loss term: {panel}" if panel != "loss" else "total loss"), fontsize=10
        )
    for axes in grid[len(panels) :]:
        axes.set_axis_off()
    figure.suptitle(title or "training curves", fontsize=12)
    return figure


def read_eval_json(path: str | Path) -> dict[str, Any]:
    """Metrics with ``per_class`` from ``protoseg eval --json`` / ``--out`` (or ``seeds-eval --json``:
    its ``best_metrics``); NaN may be written as NaN or null. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation JSON not found: {path}")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON: {error}") from None
    if (
        isinstance(metrics, dict)
        and "per_class" not in metrics
        and isinstance(metrics.get("best_metrics"), dict)
    ):
        metrics = {**metrics["best_metrics"], "split": metrics.get("split")}
    if not isinstance(metrics, dict) or not isinstance(metrics.get("per_class"), list):
        raise ValueError(f"{path} has no 'per_class' list; write it with `protoseg eval --json` or `--out`")
    for entry in metrics["per_class"]:
        if not isinstance(entry, dict) or "name" not in entry or "iou" not in entry:
            raise ValueError(f"{path}: per_class entries need 'name' and 'iou', got {entry!r}")
    return metrics


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def per_class_figure_inches(num_classes: int) -> tuple[float, float]:
    return BAR_WIDTH_INCHES, max(3.0, num_classes * BAR_INCHES_PER_CLASS + BAR_EXTRA_INCHES)


def draw_per_class_iou(metrics: dict[str, Any], title: str = "") -> Figure:
    """Horizontal IoU bars, one per class (top to bottom in class order), the mIoU as a dashed line;
    classes whose IoU is NaN (absent from prediction and ground truth) are marked ``n/a``."""
    entries = metrics["per_class"]
    names = [str(entry["name"]) for entry in entries]
    values = [_number(entry["iou"]) for entry in entries]
    figure = new_figure(*per_class_figure_inches(len(entries)))
    axes = figure.add_subplot(1, 1, 1)
    axes.set_label("per_class_iou")
    positions = list(range(len(entries)))
    bars = axes.barh(positions, [0.0 if math.isnan(v) else v for v in values], color="tab:blue")
    for bar, value in zip(bars, values):
        text = "n/a" if math.isnan(value) else f"{value:.1f}"
        axes.text(bar.get_width() + 1, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=8)
    mean = _number(metrics.get("mIoU"))
    if not math.isnan(mean):
        axes.axvline(mean, color="tab:red", linestyle="--", label=f"mIoU {mean:.2f}")
        axes.legend(loc="lower right", fontsize=9)
    axes.set_yticks(positions, names, fontsize=9)
    axes.invert_yaxis()
    axes.set_xlim(0, 110)
    axes.set_xlabel("IoU (%)")
    axes.grid(True, axis="x", alpha=0.3)
    details = [str(metrics["split"])] if metrics.get("split") else []
    if metrics.get("checkpoint"):
        details.append(Path(str(metrics["checkpoint"])).name)
    suffix = f" ({', '.join(details)})" if details else ""
    axes.set_title(title or f"per-class IoU{suffix}", fontsize=11)
    return figure
