"""Pixel embeddings and prototypes in one 2-D picture (ProtoSeg, CVPR 2022, Figure 5).

A class-balanced random sample of labelled pixels is drawn in one pass over a split (a reservoir
per class: each pixel gets a uniform random key and every class keeps its ``pixels // C`` largest
keys in a :class:`StreamingTopK`, so memory is fixed). For a ProtoSeg head the sampled points are
the head's unit-norm embeddings (the space of Eq. 3) and the C * K prototypes are drawn in the same
projection; for heads without prototypes they are the decoder features (the linear classifier's
input), drawn without prototypes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import nn
from tqdm.auto import tqdm

from ..data.base import SegmentationDataset
from ..models.heads.protoseg import ProtoSegHead
from .canvas import new_figure, palette_colour
from .projection import Projection
from .run_data import decoder_features
from .topk import StreamingTopK

FIGURE_INCHES = (10.0, 7.5)


@dataclass
class PixelSample:
    """Sampled pixels: ``embeddings`` ``(M, D)``, ``labels`` ``(M,)`` and where they come from,
    ``image_index`` and ``pixel_index`` ``(M,)`` (flat ``y * w + x`` on the feature map); the head's
    ``prototypes`` ``(C * K, D)`` with ``prototype_labels`` ``(C * K,)`` (``None`` without prototypes);
    ``space`` names what the vectors are."""

    embeddings: torch.Tensor
    labels: torch.Tensor
    image_index: torch.Tensor
    pixel_index: torch.Tensor
    prototypes: torch.Tensor | None
    prototype_labels: torch.Tensor | None
    space: str
    num_images: int


def _feature_labels(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Ground truth ``(H, W)`` resized to ``(h, w)`` by nearest neighbour (as the heads do), flat."""
    resized = F.interpolate(mask[None, None].float(), size=(height, width), mode="nearest")
    return resized.reshape(-1).long()


@torch.no_grad()
def sample_pixel_embeddings(
    model: nn.Module,
    dataset: SegmentationDataset,
    num_classes: int,
    pixels: int = 3000,
    head: ProtoSegHead | None = None,
    max_images: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> PixelSample:
    """Up to ``pixels // num_classes`` random labelled pixels per class from one pass over ``dataset``.

    With ``head``, the vectors are ``head.embed(features)`` (unit norm) and the bank's prototypes
    come along; without, the decoder features ``(Cin,)`` per pixel. Ignored pixels are never drawn.
    ``generator`` (CPU) draws the random keys.
    """
    if pixels < num_classes:
        raise ValueError(f"--pixels must be at least the number of classes ({num_classes}), got {pixels}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {max_images}")
    device = next(model.parameters()).device
    reservoir = StreamingTopK(num_classes, pixels // num_classes, device=device)
    classes = torch.arange(num_classes, device=device).unsqueeze(1)
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    for index in tqdm(range(count), desc="embeddings", disable=not progress, dynamic_ncols=True):
        sample = dataset[index]
        features = decoder_features(model, sample["image"].unsqueeze(0).to(device))
        height, width = features.shape[-2:]
        if head is not None:
            vectors = head.embed(features)
        else:
            vectors = features.permute(0, 2, 3, 1).reshape(height * width, -1)
        labels = _feature_labels(sample["mask"], height, width).to(device)
        keys = torch.rand(labels.shape[0], generator=generator).to(device)
        class_keys = torch.where(labels.unsqueeze(0) == classes, keys.unsqueeze(0), -torch.inf)
        pixel_index = torch.arange(labels.shape[0], device=device)
        where = torch.stack([torch.full_like(pixel_index, index), pixel_index], dim=1)
        reservoir.update(class_keys, vectors.float(), where)
    valid = reservoir.valid.cpu()
    if not valid.any():
        raise ValueError(f"no labelled pixel in the first {count} images of the split")
    embeddings, where = (payload.cpu()[valid] for payload in reservoir.payloads)
    labels = torch.arange(num_classes).unsqueeze(1).expand_as(valid)[valid]
    prototypes = prototype_labels = None
    if head is not None:
        prototypes = head.bank.prototypes.detach().float().cpu().reshape(-1, head.bank.dim)
        prototype_labels = torch.arange(head.num_classes).repeat_interleave(head.num_prototypes)
    return PixelSample(
        embeddings=embeddings,
        labels=labels,
        image_index=where[:, 0],
        pixel_index=where[:, 1],
        prototypes=prototypes,
        prototype_labels=prototype_labels,
        space="ProtoSeg pixel embeddings" if head is not None else "decoder features (no prototypes)",
        num_images=count,
    )


def draw_embeddings(
    sample: PixelSample,
    projection: Projection,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    title: str = "",
) -> Figure:
    """Scatter of the projected pixels coloured by class, prototypes as large stars of their class colour.

    Each class's pixels are one collection labelled with the class name; the prototypes are one
    collection labelled ``"prototypes"`` (what the legend shows and tests can read back).
    """
    figure = new_figure(*FIGURE_INCHES)
    axes = figure.add_subplot(1, 1, 1)
    points = projection.points.numpy()
    labels = sample.labels.numpy()
    for class_index in np.unique(labels):
        colour = palette_colour(palette, int(class_index))
        chosen = points[labels == class_index]
        axes.scatter(
            chosen[:, 0],
            chosen[:, 1],
            s=7,
            color=[colour],
            alpha=0.7,
            linewidths=0,
            label=f"{class_names[class_index]} ({len(chosen)})",
        )
    handles, _ = axes.get_legend_handles_labels()
    if projection.extra is not None and sample.prototype_labels is not None:
        colours = [palette_colour(palette, int(label)) for label in sample.prototype_labels]
        extra = projection.extra.numpy()
        axes.scatter(
            extra[:, 0],
            extra[:, 1],
            s=200,
            marker="*",
            c=colours,
            edgecolors="black",
            linewidths=0.9,
            zorder=3,
            label="prototypes",
        )
        handles = list(handles) + [
            Line2D(
                [],
                [],
                marker="*",
                linestyle="none",
                markersize=8,
                markerfacecolor="lightgrey",
                markeredgecolor="black",
                label="prototype (class colour)",
            )
        ]
    legend = axes.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=9,
        markerscale=2.0,
        title="class (pixels)",
        frameon=False,
    )
    for handle in getattr(legend, "legend_handles", None) or legend.legendHandles:
        handle.set_alpha(1.0)  # legend swatches in the full class colour
    axes.set_xlabel(projection.axis_names[0])
    axes.set_ylabel(projection.axis_names[1])
    axes.grid(True, alpha=0.25)
    axes.set_title(title or sample.space, fontsize=11)
    return figure
