"""Class activation maps of the weakly-supervised pipeline, and pseudo labels against the ground truth.

Reads the CAM files of ``protoseg cam`` (:func:`protoseg.wsss.cam_inference.load_cam`: the CAMs of
an image's tagged classes) and, optionally, the palette PNGs of ``protoseg pseudo-label``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from ..data.palette import colour_labels
from ..ops.labels import IGNORE_INDEX
from ..wsss.cam_inference import CamRecord
from .canvas import (
    LEGEND_COLUMNS,
    class_legend_handles,
    hide_ticks,
    legend_inches,
    new_figure,
    present_classes,
)

PANEL_INCHES = 2.8
TITLE_INCHES = 0.6
COLOURBAR_INCHES = 0.9
HEAT_COLOURMAP = "jet"
HEAT_ALPHA = 0.5


def cam_names(cam_dir: str | Path) -> list[str]:
    """Sorted image names of the ``*.npz`` CAM files in ``cam_dir``; errors name the folder."""
    cam_dir = Path(cam_dir)
    if not cam_dir.is_dir():
        raise FileNotFoundError(f"CAM folder not found: {cam_dir}")
    names = sorted(path.stem for path in cam_dir.glob("*.npz"))
    if not names:
        raise ValueError(f"no CAM files (*.npz) in {cam_dir}; write them with `protoseg cam`")
    return names


def read_label_png(path: str | Path) -> np.ndarray:
    """The ``(H, W)`` label values of a (palette) PNG such as a pseudo label; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudo label not found: {path}")
    with Image.open(path) as handle:
        array = np.array(handle)
    if array.ndim != 2:
        raise ValueError(f"{path} is not a single-channel label PNG (shape {array.shape})")
    return array


def cam_class_names(class_names: Sequence[str], has_background: bool) -> list[str]:
    """Names of the CAM classes: the foreground classes when the dataset has a background (class 0)."""
    return list(class_names[1:]) if has_background else list(class_names)


def cam_figure_inches(num_cams: int, num_legend_classes: int | None = None) -> tuple[float, float]:
    """(width, height) in inches of one image's row: image, one panel per CAM and, with pseudo labels
    (``num_legend_classes`` given: the classes in pseudo label or ground truth), pseudo label and
    ground truth panels above a class legend."""
    with_pseudo = num_legend_classes is not None
    panels = 1 + max(num_cams, 1) + (2 if with_pseudo else 0)
    height = PANEL_INCHES + TITLE_INCHES + (legend_inches(num_legend_classes) if with_pseudo else 0)
    return panels * PANEL_INCHES + COLOURBAR_INCHES, height


def label_agreement(pseudo: np.ndarray, truth: np.ndarray) -> float:
    """Percent of pixels labelled in both (neither is 255) where ``pseudo`` equals ``truth`` (NaN if none)."""
    both = (pseudo != IGNORE_INDEX) & (truth != IGNORE_INDEX)
    return float(100.0 * (pseudo[both] == truth[both]).mean()) if both.any() else float("nan")


def draw_cams(
    rgb: np.ndarray,
    record: CamRecord,
    cam_names_: Sequence[str],
    image_name: str,
    truth: np.ndarray | None = None,
    pseudo: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
) -> Figure:
    """Image | CAM heat map over the image per tagged class | (pseudo label | ground truth).

    Args:
        rgb: ``(H, W, 3)`` uint8 image; record: its CAMs (same ``H, W``).
        cam_names_: the names of the CAM classes (:func:`cam_class_names`).
        truth, pseudo: ``(H, W)`` labels (255 = ignore); the last two panels appear when ``pseudo``
            is given, coloured with ``palette`` and a legend of ``class_names``.

    CAM axes are labelled ``"cam/<class index>"`` (``Axes.get_label()``) for programmatic checks.
    """
    with_pseudo = pseudo is not None
    shown: list[int] | None = None
    if with_pseudo:
        assert truth is not None and palette is not None and class_names is not None
        shown = present_classes(pseudo, truth, num_classes=len(class_names))
    figure = new_figure(*cam_figure_inches(len(record.class_indices), None if shown is None else len(shown)))
    panels = 1 + max(len(record.class_indices), 1) + (2 if with_pseudo else 0)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    for panel in axes:
        hide_ticks(panel)
    axes[0].imshow(rgb)
    axes[0].set_title(f"image {image_name}", fontsize=10)
    norm = Normalize(0.0, 1.0)
    heat = None
    if len(record.class_indices) == 0:
        axes[1].text(0.5, 0.5, "no tagged class", ha="center", va="center", transform=axes[1].transAxes)
    for position, (class_index, cam) in enumerate(zip(record.class_indices, record.cams)):
        panel = axes[1 + position]
        panel.set_label(f"cam/{int(class_index)}")
        panel.imshow(rgb)
        heat = panel.imshow(cam, cmap=HEAT_COLOURMAP, norm=norm, alpha=HEAT_ALPHA)
        panel.set_title(f"CAM: {cam_names_[int(class_index)]}\n(max {cam.max():.2f})", fontsize=10)
    if heat is not None:
        figure.colorbar(
            heat, ax=list(axes[1 : 1 + len(record.class_indices)]), shrink=0.85, label="CAM score"
        )
    if shown is not None:
        agreement = label_agreement(pseudo, truth)
        axes[-2].imshow(colour_labels(pseudo, palette))
        axes[-2].set_title(f"pseudo label\n({agreement:.1f}% agree with ground truth)", fontsize=10)
        axes[-1].imshow(colour_labels(truth, palette))
        axes[-1].set_title("ground truth\n(white: ignore)", fontsize=10)
        figure.legend(
            handles=class_legend_handles(shown, class_names, palette),
            loc="outside lower center",
            ncols=min(len(shown), LEGEND_COLUMNS) or 1,
            fontsize=9,
            frameon=False,
        )
    return figure
