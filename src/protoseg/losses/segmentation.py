"""Pixel-wise cross-entropy of logits upsampled to the label resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.labels import IGNORE_INDEX


def upsampled_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """CE between ``logits`` (B, C, h, w), bilinearly upsampled, and ``target`` (B, H, W).

    Returns 0 (with a gradient path) when every pixel is ignored, instead of NaN.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    valid = (target != ignore_index).sum()
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / valid.clamp_min(1)


class SegmentationCELoss(nn.Module):
    """Criterion of the linear head: ``forward(outputs, target, iteration=0) -> {"loss", "ce"}``."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(
        self, outputs: dict[str, torch.Tensor], target: torch.Tensor, iteration: int = 0
    ) -> dict[str, torch.Tensor]:
        ce = upsampled_cross_entropy(outputs["logits"], target, self.ignore_index)
        return {"loss": ce, "ce": ce.detach()}
