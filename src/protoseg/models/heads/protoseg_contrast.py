"""ProtoSeg + pixel contrast: the two are complementary (prototype view + cross-image contrast)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .contrast import ProjectionHead
from .protoseg import ProtoSegHead


class ProtoSegContrastHead(nn.Module):
    """A :class:`ProtoSegHead` plus ContrastiveSeg's projection head on the same decoder features.

    ``forward(features (B, Cin, h, w), target=None)`` returns the ProtoSeg head's outputs and, in
    training, ``"embeddings"`` ``(B, proj_dim, h, w)`` (L2-normalised) for the pixel-contrast loss.

    Args:
        protoseg: keyword arguments of :class:`ProtoSegHead` (without in_channels / num_classes).
        proj_dim: channels of the contrast embeddings.
    """

    def __init__(
        self, in_channels: int, num_classes: int, protoseg: dict[str, Any], proj_dim: int = 256
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.protoseg = ProtoSegHead(in_channels, num_classes, **protoseg)
        self.projection = ProjectionHead(in_channels, proj_dim)

    def forward(self, features: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, Any]:
        outputs: dict[str, Any] = self.protoseg(features, target)
        if self.training and target is not None:
            outputs["embeddings"] = self.projection(features)
        return outputs

    def update_prototypes(self, update) -> None:
        """See :meth:`ProtoSegHead.update_prototypes`."""
        self.protoseg.update_prototypes(update)
