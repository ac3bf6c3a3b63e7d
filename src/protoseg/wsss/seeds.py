"""Seed evaluation with a background-threshold sweep (methods.md section 5, step 3).

The seed of an image at background threshold t is ``argmax(cat(t, CAM))`` over labels
``0 = background, c + 1 = foreground class c``; its mIoU against the ground-truth masks is
computed for every threshold from one pass over the CAM files
(:func:`protoseg.ops.metrics.threshold_sweep_confusion_matrices`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from protoseg.files import atomic_write
from protoseg.ops.labels import IGNORE_INDEX
from protoseg.ops.metrics import (
    format_metrics_table,
    segmentation_metrics,
    threshold_sweep_confusion_matrices,
)
from protoseg.wsss.cam_inference import cam_path, load_cam

MaskLoader = Callable[[str], np.ndarray]


class SweepEdgeWarning(UserWarning):
    """The best threshold of a sweep is its first or last value: a better one may lie outside it."""


def sweep_edge_warning(result: dict) -> str | None:
    """A warning text when the best threshold of ``result`` (from :func:`evaluate_seeds`) lies at the
    edge of the swept range (and the sweep has more than one value), else None."""
    thresholds = result["thresholds"]
    if len(thresholds) < 2:
        return None
    best = result["best_threshold"]
    low, high = min(thresholds), max(thresholds)
    if best == high:
        side, direction = "highest", "above"
    elif best == low and low > 0:  # nothing lies below a threshold of 0
        side, direction = "lowest", "below"
    else:
        return None
    return (
        f"the best background threshold {best:g} is the {side} value of the sweep "
        f"({low:g}..{high:g}); a better one may lie {direction} it: widen --thresholds"
    )


def _validated_thresholds(thresholds: Sequence[float], source: str) -> list[float]:
    values = [float(value) for value in thresholds]
    if not values:
        raise ValueError(f"no thresholds in {source!r}")
    for value in values:
        if not math.isfinite(value):
            raise ValueError(f"threshold {value} in {source!r} is not finite")
    duplicates = sorted({value for value in values if values.count(value) > 1})
    if duplicates:
        raise ValueError(f"duplicate thresholds {duplicates} in {source!r}")
    return values


def _parse_number(text: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"cannot parse {text.strip()!r} in thresholds {spec!r}: expected start:stop:step or a comma list"
        ) from None


def parse_thresholds(spec: str) -> list[float]:
    """Thresholds from ``"start:stop:step"`` (stop included when it lies on the grid) or ``"0.1,0.2"``.

    Grid values are rounded to 10 decimals so that ``"0:0.6:0.05"`` gives 0.15, not 0.15000000000000002.
    """
    if not spec.strip():
        raise ValueError("empty threshold specification")
    if ":" not in spec:
        return _validated_thresholds([_parse_number(part, spec) for part in spec.split(",")], spec)
    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(f"threshold range {spec!r} must be start:stop:step")
    start, stop, step = (_parse_number(part, spec) for part in parts)
    if not all(math.isfinite(value) for value in (start, stop, step)):
        raise ValueError(f"threshold range {spec!r} has a non-finite value")
    if step <= 0:
        raise ValueError(f"threshold step must be > 0 in {spec!r}")
    if stop < start:
        raise ValueError(f"threshold stop < start in {spec!r}")
    count = math.floor((stop - start) / step + 1e-9) + 1
    return _validated_thresholds([round(start + index * step, 10) for index in range(count)], spec)


def evaluate_seeds(
    cam_dir: str | os.PathLike,
    mask_loader: MaskLoader,
    names: Sequence[str],
    num_classes_with_bg: int,
    thresholds: Sequence[float],
    ignore_index: int = IGNORE_INDEX,
    class_names: Sequence[str] | None = None,
    progress: bool = False,
) -> dict:
    """mIoU of the CAM seeds of ``names`` for every background threshold, from one pass over the files.

    Args:
        cam_dir: folder of ``<name>.npz`` files from :func:`protoseg.wsss.cam_inference.save_cam`.
        mask_loader: ``name -> (H, W)`` integer ground-truth mask (0 = background, ``ignore_index`` ignored).
        names: the images to evaluate.
        num_classes_with_bg: L = number of CAM classes + 1.
        thresholds: background scores to sweep.
        class_names: L names for the per-class table (default: indices).

    Returns:
        ``{"thresholds", "miou" (per threshold, percent), "best_index", "best_threshold",
        "best_metrics" (segmentation_metrics of the best threshold), "num_images"}``. Writes nothing.
    """
    thresholds = _validated_thresholds(thresholds, "thresholds")
    if num_classes_with_bg < 2:
        raise ValueError(f"num_classes_with_bg must be >= 2, got {num_classes_with_bg}")
    if len(names) == 0:
        raise ValueError("no image names to evaluate")
    threshold_tensor = torch.tensor(thresholds, dtype=torch.float64)
    confusions = torch.zeros(len(thresholds), num_classes_with_bg, num_classes_with_bg, dtype=torch.int64)
    for name in tqdm(names, desc="seed evaluation", disable=not progress, dynamic_ncols=True):
        path = cam_path(cam_dir, name)
        if not path.exists():
            raise ValueError(f"missing CAM file {path} for image {name!r}")
        record = load_cam(path)
        if record.num_classes != num_classes_with_bg - 1:
            raise ValueError(
                f"{path} has {record.num_classes} CAM classes, expected num_classes_with_bg - 1 = "
                f"{num_classes_with_bg - 1}"
            )
        mask = np.asarray(mask_loader(name))
        if mask.shape != record.size:
            raise ValueError(f"mask of {name!r} has shape {mask.shape} but its CAM {path} has {record.size}")
        confusions += threshold_sweep_confusion_matrices(
            torch.from_numpy(record.dense()),
            torch.from_numpy(mask.astype(np.int64)),
            threshold_tensor,
            ignore_index=ignore_index,
        )
    all_metrics = [segmentation_metrics(confusion, class_names) for confusion in confusions]
    miou = [metrics["mIoU"] for metrics in all_metrics]
    best_index = int(np.nanargmax(miou)) if not all(math.isnan(value) for value in miou) else 0
    return {
        "thresholds": thresholds,
        "miou": miou,
        "best_index": best_index,
        "best_threshold": thresholds[best_index],
        "best_metrics": all_metrics[best_index],
        "num_images": len(names),
    }


def format_seed_table(result: dict, digits: int = 2) -> str:
    """Threshold / mIoU table (best row marked ``*``), then the per-class table of the best threshold."""
    lines = ["bg threshold |    mIoU", "-------------+--------"]
    for index, (threshold, miou) in enumerate(zip(result["thresholds"], result["miou"])):
        marker = " *" if index == result["best_index"] else ""
        lines.append(f"{threshold:>12.4g} | {miou:>7.{digits}f}{marker}")
    lines.append("")
    lines.append(f"best threshold {result['best_threshold']:.4g} ({result['num_images']} images):")
    lines.append(format_metrics_table(result["best_metrics"], digits=digits))
    return "\n".join(lines)


def plot_seed_curve(result: dict, path: str | os.PathLike) -> Path:
    """PNG of seed mIoU vs background threshold with the best point marked; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = np.argsort(result["thresholds"])
    thresholds = np.asarray(result["thresholds"], dtype=np.float64)[order]
    miou = np.asarray(result["miou"], dtype=np.float64)[order]
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(thresholds, miou, marker="o", label="seed mIoU")
    best_threshold = result["best_threshold"]
    best_miou = result["miou"][result["best_index"]]
    axes.plot(
        [best_threshold],
        [best_miou],
        marker="*",
        markersize=16,
        color="tab:red",
        linestyle="none",
        label=f"best: t={best_threshold:.3g}, mIoU={best_miou:.2f}",
    )
    axes.set_xlabel("background threshold")
    axes.set_ylabel("mIoU (%)")
    axes.set_title(f"CAM seed mIoU vs background threshold ({result['num_images']} images)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    return atomic_write(path, lambda file: figure.savefig(file, format="png"))
