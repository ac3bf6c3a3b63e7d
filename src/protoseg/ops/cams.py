"""Class activation maps as labels: the seed rule shared by validation and pseudo labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

CAM_EPSILON = 1e-5
"""Added to each class's maximum when CAMs are max-normalised (as the WSSS releases do)."""


def normalise_cams(cams: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """ReLU, per-class max normalisation and restriction to the tags: ``(B, C, h, w)`` -> same shape.

    ``tags`` ``(B, C)`` multi-hot; untagged classes become 0.
    """
    cams = cams.float().relu()
    return cams / (cams.amax(dim=(2, 3), keepdim=True) + CAM_EPSILON) * tags[:, :, None, None].float()


def cam_seed_labels(cams: torch.Tensor, tags: torch.Tensor, size, bg_threshold: float) -> torch.Tensor:
    """Seed labels from raw foreground CAMs: ``argmax(cat(bg_threshold, normalised CAMs))``.

    ``cams`` (B, C, h, w) raw foreground CAMs, ``tags`` (B, C) -> (B, H, W) labels with 0 = background
    and c + 1 = foreground class c. CAMs are upsampled (bilinear) to ``size`` first.
    """
    cams = F.interpolate(cams.float(), size=size, mode="bilinear", align_corners=False)
    cams = normalise_cams(cams, tags)
    background = torch.full_like(cams[:, :1], bg_threshold)
    return torch.cat([background, cams], dim=1).argmax(dim=1)
