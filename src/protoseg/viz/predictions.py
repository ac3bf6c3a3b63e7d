"""Predictions next to the ground truth: image | ground truth | prediction | error map."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import nn

from ..config import Config
from ..data.palette import colour_labels
from ..ops.inference import InferenceSettings, predict_probabilities
from ..ops.labels import IGNORE_INDEX
from ..ops.metrics import confusion_matrix, segmentation_metrics
from .canvas import (
    LEGEND_COLUMNS,
    class_legend_handles,
    hide_ticks,
    legend_inches,
    new_figure,
    present_classes,
)

PANEL_INCHES = 3.0
TITLE_INCHES = 0.6
ERROR_COLOUR = (220, 30, 30)


@torch.no_grad()
def predict_labels(model: nn.Module, cfg: Config, image: torch.Tensor, num_classes: int) -> np.ndarray:
    """``(H, W)`` int64 argmax labels of normalised ``image`` ``(1, 3, H, W)`` with the run's eval
    settings (scales, flip, whole / sliding window), as ``protoseg eval`` and ``predict`` compute them."""
    device = next(model.parameters()).device
    settings = InferenceSettings.from_config(cfg.eval, cfg.data.crop_size)
    probabilities = predict_probabilities(model.predict, image.to(device), num_classes, settings)
    return probabilities.argmax(dim=1)[0].cpu().numpy().astype(np.int64)


def error_map(rgb: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8: the image dimmed to grey, wrong pixels red, ignored pixels white."""
    grey = rgb.astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2)
    shown = 60.0 + 0.35 * grey
    wrong = (truth != IGNORE_INDEX) & (truth != prediction)
    shown[wrong] = ERROR_COLOUR
    shown[truth == IGNORE_INDEX] = 255.0
    return shown.clip(0, 255).astype(np.uint8)


def prediction_figure_inches(num_legend_classes: int) -> tuple[float, float]:
    """(width, height) in inches of one image's figure: 4 panels and a legend below of the
    classes present plus "ignore" and "error"."""
    return 4 * PANEL_INCHES, PANEL_INCHES + TITLE_INCHES + legend_inches(num_legend_classes + 2)


def draw_prediction(
    rgb: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    image_name: str = "",
) -> Figure:
    """Four panels with the dataset's palette and a legend of the classes present in either mask.

    The title gives the image's pixel accuracy and mIoU over the classes present (percent). Axes
    are labelled ``"image"``, ``"truth"``, ``"prediction"``, ``"errors"`` for programmatic checks.
    """
    num_classes = len(class_names)
    metrics = segmentation_metrics(
        confusion_matrix(torch.from_numpy(prediction), torch.from_numpy(truth.astype(np.int64)), num_classes),
        list(class_names),
    )
    shown = present_classes(truth, prediction, num_classes=num_classes)
    figure = new_figure(*prediction_figure_inches(len(shown)))
    axes = figure.subplots(1, 4)
    panels = (
        ("image", rgb, f"image {image_name}"),
        ("truth", colour_labels(truth, palette), "ground truth"),
        ("prediction", colour_labels(prediction, palette), "prediction"),
        (
            "errors",
            error_map(rgb, truth, prediction),
            f"errors (red): {100 - metrics['aAcc']:.1f}% of pixels",
        ),
    )
    for panel, (label, picture, title) in zip(axes, panels):
        panel.set_label(label)
        panel.imshow(picture)
        panel.set_title(title, fontsize=10)
        hide_ticks(panel)
    handles = class_legend_handles(shown, class_names, palette) + [
        Patch(facecolor="white", edgecolor="black", label="ignore"),
        Patch(facecolor=np.asarray(ERROR_COLOUR) / 255.0, edgecolor="black", label="error"),
    ]
    figure.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(len(handles), LEGEND_COLUMNS),
        fontsize=9,
        frameon=False,
    )
    figure.suptitle(
        f"{image_name}: pixel accuracy {metrics['aAcc']:.1f}%, "
        f"mIoU over the classes present {metrics['mIoU']:.1f}%",
        fontsize=11,
    )
    return figure
