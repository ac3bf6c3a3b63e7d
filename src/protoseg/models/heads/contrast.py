"""ContrastiveSeg head (Wang et al., ICCV 2021): linear segmentation head + projection head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """``(B, Cin, h, w) -> (B, proj_dim, h, w)``: 1x1 conv, BN, ReLU, 1x1 conv, L2 norm over channels."""

    def __init__(self, in_channels: int, proj_dim: int = 256) -> None:
        super().__init__()
        if in_channels < 1 or proj_dim < 1:
            raise ValueError(f"ProjectionHead needs in_channels, proj_dim >= 1: {in_channels}, {proj_dim}")
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, proj_dim, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.layers(features), dim=1)


class ContrastHead(nn.Module):
    """Linear classifier for the logits plus a projection head for the pixel-contrast embeddings.

    ``forward(features (B, Cin, h, w), target=None, projection_features=None)`` returns ``"logits"``
    (B, num_classes, h, w); in training (``self.training and target is not None``) also
    ``"embeddings"`` (B, proj_dim, h, w), L2-normalised, the projection of ``projection_features``
    (B, projection_channels, h, w) when given (the release projects the concatenated backbone levels),
    else of ``features``.

    Args:
        dropout: Dropout2d before the classifier (the release's segmentation head has 0.1).
        projection_channels: input channels of the projection (default: ``in_channels``).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        proj_dim: int = 256,
        dropout: float = 0.1,
        projection_channels: int | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"ContrastHead num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)
        self.projection = ProjectionHead(projection_channels or in_channels, proj_dim)

    def forward(
        self,
        features: torch.Tensor,
        target: torch.Tensor | None = None,
        projection_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        outputs = {"logits": self.classifier(self.dropout(features))}
        if self.training and target is not None:
            source = features if projection_features is None else projection_features
            outputs["embeddings"] = self.projection(source)
        return outputs
