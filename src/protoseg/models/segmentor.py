"""Segmentor = backbone + decoder + head; the head is the swappable part."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Segmentor(nn.Module):
    """A semantic segmentation network.

    ``forward(images (B, 3, H, W), target (B, H, W) | None)`` returns the head's output dict
    (``"logits"`` at feature resolution, plus training-only entries of the method);
    ``predict(images)`` returns logits upsampled to the input size.
    """

    def __init__(self, backbone: nn.Module, decoder: nn.Module, head: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.head = head
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.head(self.decoder(self.backbone(images)), target)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.forward(images)["logits"]
        return F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
