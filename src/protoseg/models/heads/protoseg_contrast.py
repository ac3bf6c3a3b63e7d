"""ProtoSeg + pixel contrast: the two are complementary (prototype view + cross-image contrast)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...prototypes.pixel_queue import PixelQueue
from .contrast import ProjectionHead
from .protoseg import ProtoSegHead


class ProtoSegContrastHead(nn.Module):
    """A :class:`ProtoSegHead` plus ContrastiveSeg's projection head on the same decoder features.

    ``forward(features (B, Cin, h, w), target=None)`` returns the ProtoSeg head's outputs and, in
    training, ``"embeddings"`` ``(B, proj_dim, h, w)`` (L2-normalised) for the pixel-contrast loss
    (and ``"memory"``, the :class:`PixelQueue`, when ``use_memory``).

    Args:
        protoseg: keyword arguments of :class:`ProtoSegHead` (without in_channels / num_classes).
        contrast: ``proj_dim``, ``use_memory``, ``memory_size``, ``pixels_per_image``.
    """

    def __init__(
        self, in_channels: int, num_classes: int, protoseg: dict[str, Any], contrast: dict[str, Any]
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.protoseg = ProtoSegHead(in_channels, num_classes, **protoseg)
        proj_dim = contrast.get("proj_dim", 256)
        self.projection = ProjectionHead(in_channels, proj_dim)
        self.memory = (
            PixelQueue(
                num_classes, proj_dim, contrast.get("memory_size", 5000), contrast.get("pixels_per_image", 10)
            )
            if contrast.get("use_memory", False)
            else None
        )

    def forward(self, features: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, Any]:
        outputs: dict[str, Any] = self.protoseg(features, target)
        if self.training and target is not None:
            outputs["embeddings"] = self.projection(features)
            if self.memory is not None:
                outputs["memory"] = self.memory
        return outputs
