"""Pixel-to-prototype similarity maps (ProtoSeg, CVPR 2022, Figure 3).

For one image and a class c, each of the class's K prototypes p_{c,k} gets the map
``S_k(y, x) = <x_{y,x}, p_{c,k}>`` (Eq. 3's cosine similarity: the head's embeddings and the
prototypes both have unit norm) at the feature resolution; the head scores class c by
``max_k S_k`` (Eq. 4). The last panel shows the nearest prototype ``argmax_k S_k`` on the pixels
whose ground truth is c: how the class is split between its prototypes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from torch import nn

from ..models.heads.protoseg import ProtoSegHead
from ..ops.labels import IGNORE_INDEX
from .canvas import hide_ticks, new_figure
from .run_data import decoder_features

PANEL_INCHES = 2.2
TITLE_INCHES = 0.5
COLOURBAR_INCHES = 1.0
MAP_COLOURMAP = "viridis"


@torch.no_grad()
def similarity_maps(model: nn.Module, head: ProtoSegHead, image: torch.Tensor) -> torch.Tensor:
    """``S[c, k, y, x] = <x_{y,x}, p_{c,k}>`` float32 ``(C, K, h, w)`` on the CPU.

    Args:
        model: the segmentor (``backbone``, ``decoder``) in eval mode.
        head: its :class:`ProtoSegHead`.
        image: normalised ``(1, 3, H, W)`` image (moved to the model's device here).
    """
    device = next(model.parameters()).device
    features = decoder_features(model, image.to(device))
    height, width = features.shape[-2:]
    similarities = head.bank.similarities(head.embed(features))  # (h * w, C, K), pixels in (y, x) order
    maps = similarities.float().view(height, width, head.num_classes, head.num_prototypes)
    return maps.permute(2, 3, 0, 1).contiguous().cpu()


def labels_at(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """``mask`` ``(H, W)`` resized to ``(h, w)`` by nearest neighbour (as the head resizes targets)."""
    tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=(height, width), mode="nearest")[0, 0].numpy().astype(np.int64)


def similarity_figure_inches(num_rows: int, num_prototypes: int) -> tuple[float, float]:
    """(width, height) in inches of the figure of ``num_rows`` classes with K prototypes each:
    image, ground truth, K maps and the nearest-prototype panel per row, plus colour bars."""
    width = (3 + num_prototypes) * PANEL_INCHES + 2 * COLOURBAR_INCHES
    return width, num_rows * PANEL_INCHES + TITLE_INCHES


def _class_highlight(rgb: np.ndarray, mask: np.ndarray, class_index: int) -> np.ndarray:
    """The image with the pixels of ``class_index`` kept and the others dimmed; ignore white."""
    grey = rgb.astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2)
    dimmed = 40.0 + 0.25 * grey
    shown = np.where((mask == class_index)[..., None], rgb.astype(np.float32), dimmed)
    shown[mask == IGNORE_INDEX] = 255.0
    return shown.clip(0, 255).astype(np.uint8)


def draw_similarity(
    rgb: np.ndarray,
    mask: np.ndarray,
    maps: torch.Tensor,
    classes: Sequence[int],
    class_names: Sequence[str],
    image_name: str = "",
) -> Figure:
    """One row per class in ``classes``: image | its ground truth | K similarity maps | nearest prototype.

    Args:
        rgb: ``(H, W, 3)`` uint8 image; mask: ``(H, W)`` ground truth (255 = ignore).
        maps: ``(C, K, h, w)`` from :func:`similarity_maps` (drawn as given, stretched over the image).
        classes: class indices to show; class_names: all C names.

    The K maps of a row share one colour scale (row min .. max) and colour bar. Axes are labelled
    ``"similarity/<c>/<k>"`` and ``"nearest/<c>"`` (``Axes.get_label()``) for programmatic checks.
    """
    num_prototypes, height, width = maps.shape[1:]
    image_height, image_width = mask.shape
    extent = (0, image_width, image_height, 0)
    small_labels = labels_at(mask, height, width)
    figure = new_figure(*similarity_figure_inches(len(classes), num_prototypes))
    grid = figure.subplots(len(classes), 3 + num_prototypes, squeeze=False)
    prototype_colours = ListedColormap(
        [colormaps["tab10"](k % 10) for k in range(num_prototypes)], name="prototypes"
    )
    prototype_norm = BoundaryNorm(np.arange(num_prototypes + 1) - 0.5, num_prototypes)
    for row, class_index in enumerate(classes):
        name = class_names[class_index]
        axes = grid[row]
        class_maps = maps[class_index].numpy()
        axes[0].imshow(rgb)
        axes[0].set_title(image_name or "image", fontsize=9)
        axes[0].set_ylabel(name, fontsize=12, fontweight="bold")
        share = 100.0 * float((mask == class_index).mean())
        axes[1].imshow(_class_highlight(rgb, mask, class_index))
        axes[1].set_title(f"ground truth: {name}\n({share:.1f}% of pixels)", fontsize=9)
        low, high = float(class_maps.min()), float(class_maps.max())
        shown = None
        for k in range(num_prototypes):
            panel = axes[2 + k]
            panel.set_label(f"similarity/{class_index}/{k}")
            shown = panel.imshow(
                class_maps[k],
                cmap=MAP_COLOURMAP,
                vmin=low,
                vmax=high,
                extent=extent,
                interpolation="nearest",
            )
            panel.set_title(f"{name} · prototype {k}\nmax {class_maps[k].max():.2f}", fontsize=9)
        figure.colorbar(shown, ax=list(axes[2 : 2 + num_prototypes]), shrink=0.85, label="cosine similarity")
        nearest = np.ma.masked_where(small_labels != class_index, class_maps.argmax(axis=0))
        last = axes[2 + num_prototypes]
        last.set_label(f"nearest/{class_index}")
        last.imshow(rgb, alpha=0.35)
        assigned = last.imshow(
            nearest, cmap=prototype_colours, norm=prototype_norm, extent=extent, interpolation="nearest"
        )
        last.set_title(f"nearest {name} prototype\n(on its ground truth)", fontsize=9)
        bar = figure.colorbar(assigned, ax=last, shrink=0.85, ticks=range(num_prototypes))
        bar.set_label("prototype")
        for panel in axes:
            hide_ticks(panel)
    figure.suptitle(
        f"pixel-to-prototype similarity {image_name} (maps at feature resolution {height}x{width})",
        fontsize=11,
    )
    return figure
