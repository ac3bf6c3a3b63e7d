"""Label maps: the ignore value shared by every dataset, loss and writer, and label resizing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
"""Label of ignored pixels in protoseg's label space (datasets map their own ignore value to it)."""


def resize_labels(labels: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Nearest-neighbour resize of ``labels`` (B, H', W') to ``size`` = (H, W); returns int64 (B, H, W).

    Same result as ``F.interpolate(..., mode="nearest")`` (source index ``floor(i * H' / H)``); an
    integer down-scaling factor is a strided view (no float round trip, exact for any label value).
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, H, W), got shape {tuple(labels.shape)}")
    (in_height, in_width), (height, width) = labels.shape[-2:], tuple(size)
    if (in_height, in_width) == (height, width):
        return labels.long()
    if in_height % height == 0 and in_width % width == 0:
        return labels[:, :: in_height // height, :: in_width // width].long().contiguous()
    resized = F.interpolate(labels.unsqueeze(1).float(), size=(height, width), mode="nearest")
    return resized.squeeze(1).long()
