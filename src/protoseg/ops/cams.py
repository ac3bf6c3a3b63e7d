"""Class activation maps as labels: the seed rule shared by validation and pseudo labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

CAM_EPSILON = 1e-5
"""Added to each class's maximum when CAMs are max-normalised (as the WSSS releases do)."""


CAM_NORMALISATIONS = ("max", "minmax")
"""``max``: ``x / (max + eps)`` (IRN, EPS); ``minmax``: ``relu(x - min - eps) / (max - min + eps)`` (SEAM
and the PPC releases' inference), both after the ReLU and per image and class."""


def normalise_cams(cams: torch.Tensor, tags: torch.Tensor, normalisation: str = "max") -> torch.Tensor:
    """ReLU, per-class normalisation (:data:`CAM_NORMALISATIONS`) and restriction to the tags:
    ``(B, C, h, w)`` -> same shape.

    ``tags`` ``(B, C)`` multi-hot; untagged classes become 0.
    """
    if normalisation not in CAM_NORMALISATIONS:
        raise ValueError(f"CAM normalisation must be one of {CAM_NORMALISATIONS}, got '{normalisation}'")
    cams = cams.float().relu()
    maximum = cams.amax(dim=(2, 3), keepdim=True)
    if normalisation == "minmax":
        minimum = cams.amin(dim=(2, 3), keepdim=True)
        cams = (cams - minimum - CAM_EPSILON).relu() / (maximum - minimum + CAM_EPSILON)
    else:
        cams = cams / (maximum + CAM_EPSILON)
    return cams * tags[:, :, None, None].float()


def cam_seed_labels(
    cams: torch.Tensor, tags: torch.Tensor, size, bg_threshold: float, normalisation: str = "max"
) -> torch.Tensor:
    """Seed labels from raw foreground CAMs: ``argmax(cat(bg_threshold, normalised CAMs))``.

    ``cams`` (B, C, h, w) raw foreground CAMs, ``tags`` (B, C) -> (B, H, W) labels with 0 = background
    and c + 1 = foreground class c. CAMs are upsampled (bilinear) to ``size`` first.
    """
    cams = F.interpolate(cams.float(), size=size, mode="bilinear", align_corners=False)
    cams = normalise_cams(cams, tags, normalisation)
    background = torch.full_like(cams[:, :1], bg_threshold)
    return torch.cat([background, cams], dim=1).argmax(dim=1)
