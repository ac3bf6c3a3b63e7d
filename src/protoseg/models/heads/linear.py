"""The baseline head: a learnable linear classifier (1x1 conv) per pixel."""

from __future__ import annotations

import torch
from torch import nn


class LinearHead(nn.Module):
    """``forward(features (B, Cin, h, w), target=None) -> {"logits": (B, num_classes, h, w)}``.

    Args:
        dropout: Dropout2d before the classifier (0: none).
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, features: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"logits": self.classifier(self.dropout(features))}
