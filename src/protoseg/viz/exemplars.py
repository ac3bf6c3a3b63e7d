"""What each prototype stands for: the dataset's image patches most similar to it.

One pass over a split. For every image and every prototype p_{c,k} the best pixel is
``argmax_{y,x} <x_{y,x}, p_{c,k}>`` (the cosine similarity of ProtoSeg's Eq. 3); the
``patch x patch`` crop centred on that pixel is the image's candidate for the prototype, scored
by the similarity. A :class:`StreamingTopK` keeps the ``top`` best candidates per prototype in
fixed-size ``(C * K, top)`` tensors, so memory does not grow with the dataset and every image
contributes at most one patch per prototype (the grid shows ``top`` different images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from ..data.base import SegmentationDataset
from ..models.heads.protoseg import ProtoSegHead
from .canvas import hide_ticks, new_figure
from .run_data import decoder_features
from .topk import StreamingTopK

PANEL_INCHES = 1.3
ROW_TITLE_INCHES = 0.35
LABEL_INCHES = 0.6
TITLE_INCHES = 0.5
# payload columns of a candidate patch
IMAGE, TOP, LEFT, BOTTOM, RIGHT, CENTRE_Y, CENTRE_X = range(7)
PAYLOAD_WIDTH = 7


@dataclass
class Exemplars:
    """The top patches of each prototype, prototype ``c * K + k`` in row order.

    ``scores`` float32 ``(C * K, top)`` (descending; ``-inf`` where the split had fewer images);
    ``boxes`` int64 ``(C * K, top, 7)``: image index, top, left, bottom, right (exclusive, image
    pixels) and the centre pixel (y, x) of the best feature pixel.
    """

    scores: torch.Tensor
    boxes: torch.Tensor
    num_classes: int
    num_prototypes: int
    num_images: int
    patch: int

    def prototype_row(self, class_index: int, prototype: int) -> int:
        return class_index * self.num_prototypes + prototype


def candidate_boxes(
    best_pixel: torch.Tensor, feature_size: tuple[int, int], image_size: tuple[int, int], patch: int
) -> torch.Tensor:
    """``(P, 6)`` int64 boxes top, left, bottom, right, centre y, centre x of the ``patch``-sized crops
    centred on feature pixels ``best_pixel`` ``(P,)`` (flat ``y * w + x``), clamped inside the image.

    The centre of feature pixel (y, x) is image pixel ``floor((y + 0.5) * H / h)`` (likewise x).
    """
    (height, width), (image_height, image_width) = feature_size, image_size
    row, col = best_pixel // width, best_pixel % width
    centre_y = ((row.double() + 0.5) * image_height / height).floor().long()
    centre_x = ((col.double() + 0.5) * image_width / width).floor().long()
    top = (centre_y - patch // 2).clamp(0, max(0, image_height - patch))
    left = (centre_x - patch // 2).clamp(0, max(0, image_width - patch))
    bottom = (top + patch).clamp(max=image_height)
    right = (left + patch).clamp(max=image_width)
    return torch.stack([top, left, bottom, right, centre_y, centre_x], dim=1)


@torch.no_grad()
def find_exemplars(
    model: nn.Module,
    head: ProtoSegHead,
    dataset: SegmentationDataset,
    top: int = 8,
    patch: int = 32,
    max_images: int | None = None,
    progress: bool = False,
) -> Exemplars:
    """One pass over ``dataset`` (its first ``max_images``) keeping each prototype's ``top`` patches."""
    if patch < 1:
        raise ValueError(f"--patch must be >= 1, got {patch}")
    device = next(model.parameters()).device
    prototypes = head.bank.prototypes.reshape(-1, head.bank.dim)  # (P, D), P = C * K
    best = StreamingTopK(prototypes.shape[0], top, device=device)
    if max_images is not None and max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {max_images}")
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    for index in tqdm(range(count), desc="exemplars", disable=not progress, dynamic_ncols=True):
        image = dataset[index]["image"].unsqueeze(0).to(device)
        features = decoder_features(model, image)
        similarities = head.embed(features) @ prototypes.to(features.dtype).t()  # (h * w, P)
        scores, best_pixel = similarities.float().max(dim=0)
        boxes = candidate_boxes(best_pixel, tuple(features.shape[-2:]), tuple(image.shape[-2:]), patch)
        image_column = torch.full_like(boxes[:, :1], index)
        best.update(scores.unsqueeze(1), torch.cat([image_column, boxes], dim=1).unsqueeze(1))
    return Exemplars(
        scores=best.scores.cpu(),
        boxes=best.payloads[0].cpu(),
        num_classes=head.num_classes,
        num_prototypes=head.num_prototypes,
        num_images=count,
        patch=patch,
    )


def crop_exemplars(dataset: SegmentationDataset, exemplars: Exemplars) -> tuple[np.ndarray, np.ndarray]:
    """The patches ``(P, top, patch, patch, 3)`` uint8 (zero-padded when the image is smaller) and
    the ground-truth class at each patch's centre pixel ``(P, top)`` (-1 for empty slots).

    Each image is read once, however many prototypes chose it.
    """
    rows, top = exemplars.scores.shape
    size = exemplars.patch
    crops = np.zeros((rows, top, size, size, 3), dtype=np.uint8)
    centre_labels = np.full((rows, top), -1, dtype=np.int64)
    valid = torch.isfinite(exemplars.scores).numpy()
    boxes = exemplars.boxes.numpy()
    for image_index in np.unique(boxes[..., IMAGE][valid]):
        rgb, mask = dataset.load_raw(int(image_index))
        rgb = np.asarray(rgb)
        for row, slot in zip(*np.nonzero(valid & (boxes[..., IMAGE] == image_index))):
            box = boxes[row, slot]
            crop = rgb[box[TOP] : box[BOTTOM], box[LEFT] : box[RIGHT]]
            crops[row, slot, : crop.shape[0], : crop.shape[1]] = crop
            centre_labels[row, slot] = int(mask[box[CENTRE_Y], box[CENTRE_X]])
    return crops, centre_labels


def exemplar_figure_inches(num_prototypes: int, top: int) -> tuple[float, float]:
    """(width, height) in inches of one class's grid: K rows of ``top`` patches."""
    width = top * PANEL_INCHES + LABEL_INCHES
    return width, num_prototypes * (PANEL_INCHES + ROW_TITLE_INCHES) + TITLE_INCHES


def draw_exemplars(
    exemplars: Exemplars,
    crops: np.ndarray,
    centre_labels: np.ndarray,
    class_index: int,
    class_names: Sequence[str],
    split: str = "",
) -> Figure:
    """Class ``class_index``'s grid: row k = prototype k's top patches, best first, each titled with
    its similarity and the ground-truth class at its centre (green: the prototype's own class).

    Axes are labelled ``"exemplar/<c>/<k>/<rank>"`` (``Axes.get_label()``) for programmatic checks.
    """
    num_prototypes, top = exemplars.num_prototypes, exemplars.scores.shape[1]
    name = class_names[class_index]
    figure = new_figure(*exemplar_figure_inches(num_prototypes, top))
    grid = figure.subplots(num_prototypes, top, squeeze=False)
    for k in range(num_prototypes):
        row = exemplars.prototype_row(class_index, k)
        grid[k, 0].set_ylabel(f"prototype {k}", fontsize=10, fontweight="bold")
        for rank in range(top):
            axes = grid[k, rank]
            hide_ticks(axes)
            score = float(exemplars.scores[row, rank])
            if not np.isfinite(score):
                axes.set_axis_off()
                continue
            axes.set_label(f"exemplar/{class_index}/{k}/{rank}")
            box = exemplars.boxes[row, rank].tolist()
            axes.imshow(crops[row, rank])
            # the best pixel, in crop coordinates
            axes.plot([box[CENTRE_X] - box[LEFT]], [box[CENTRE_Y] - box[TOP]], "+", color="red", markersize=8)
            label = int(centre_labels[row, rank])
            label_name = class_names[label] if 0 <= label < len(class_names) else "ignore"
            colour = "darkgreen" if label == class_index else "firebrick"
            axes.set_title(f"{score:.3f} · {label_name}", fontsize=8, color=colour)
    figure.suptitle(
        f"'{name}': the {top} {split} patches most similar to each prototype "
        f"({exemplars.num_images} images, {exemplars.patch}px, + = best pixel)",
        fontsize=11,
    )
    return figure
