"""Multi-level feature fusion (HRNet-style): upsample every level to the finest, concatenate, fuse."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConcatFusionDecoder(nn.Module):
    """Concatenate all backbone levels at the finest level's resolution, then 3x3 conv + BN + ReLU.

    Args:
        in_channels: channels of each backbone level, finest first.
        channels: output channels; ``None`` keeps the concatenated width (HRNet-W48: 720).
        dropout: dropout after the fusion (0 disables).

    ``forward(features: list of (B, C_i, H_i, W_i)) -> (B, channels, H_0, W_0)``.
    """

    def __init__(self, in_channels: list[int], channels: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        total = sum(in_channels)
        self.out_channels = channels or total
        self.fuse = nn.Sequential(
            nn.Conv2d(total, self.out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(self.out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
        )

        self.concat_channels = total

    def concat(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Every level upsampled (bilinear) to the finest and concatenated: ``(B, sum C_i, H_0, W_0)``."""
        size = features[0].shape[-2:]
        upsampled = [features[0]] + [
            F.interpolate(level, size=size, mode="bilinear", align_corners=False) for level in features[1:]
        ]
        return torch.cat(upsampled, dim=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.fuse(self.concat(features))
