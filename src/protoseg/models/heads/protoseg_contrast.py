"""ProtoSeg + pixel contrast: the two are complementary (prototype view + cross-image contrast)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .contrast import ProjectionHead
from .protoseg import ProtoSegHead


class ProtoSegContrastHead(nn.Module):
    """A :class:`ProtoSegHead` plus ContrastiveSeg's projection head on the same decoder features.

    ``forward(features (B, Cin, h, w), target=None, projection_features=None)`` returns the ProtoSeg
    head's outputs and, in training, ``"embeddings"`` ``(B, proj_dim, h, w)`` (L2-normalised) for the
    pixel-contrast loss: the projection of ``projection_features`` when given, else of ``features``.

    Args:
        protoseg: keyword arguments of :class:`ProtoSegHead` (without in_channels / num_classes).
        proj_dim: channels of the contrast embeddings.
        projection_channels: input channels of the projection (default: ``in_channels``).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        protoseg: dict[str, Any],
        proj_dim: int = 256,
        projection_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.protoseg = ProtoSegHead(in_channels, num_classes, **protoseg)
        self.projection = ProjectionHead(projection_channels or in_channels, proj_dim)

    def forward(
        self,
        features: torch.Tensor,
        target: torch.Tensor | None = None,
        projection_features: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        outputs: dict[str, Any] = self.protoseg(features, target)
        if self.training and target is not None:
            source = features if projection_features is None else projection_features
            outputs["embeddings"] = self.projection(source)
        return outputs

    def update_prototypes(self, update) -> None:
        """See :meth:`ProtoSegHead.update_prototypes`."""
        self.protoseg.update_prototypes(update)
