"""The CAM classification network of PPC / the WSSS baseline: backbone -> CAM and projected features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cam_classification_loss(cam: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """Multilabel soft margin loss of the global-average-pooled foreground CAM channels.

    Args:
        cam: ``(B, C+1, h, w)`` CAM, channel 0 = background (ignored here).
        tags: ``(B, C)`` multi-hot foreground tags.

    Returns:
        scalar ``mean_b mean_c -[y log sigmoid(s) + (1 - y) log sigmoid(-s)]`` with ``s = GAP(cam)``.
    """
    scores = cam[:, 1:].float().mean(dim=(2, 3))
    return F.multilabel_soft_margin_loss(scores, tags.to(scores.dtype))


class CAMNet(nn.Module):
    """Backbone + 1x1 CAM classifier (C+1 channels, no bias) + 1x1 projector (no bias) + ReLU.

    Args:
        backbone: module whose ``forward(images)`` returns a list of feature maps and which has
            ``out_channels: list[int]``; the last level is used.
        num_classes: foreground classes C (the CAM has C+1 channels, channel 0 = background).
        proj_dim: channels of the projected features (128 in PPC); None: no projector (the plain
            CAM network), ``forward`` then returns the CAM only.

    Example:
        >>> network = CAMNet(TinyBackbone(), num_classes=20)
        >>> outputs = network(images)  # {"cam": (B, 21, h, w), "features": (B, 128, h, w)}
    """

    def __init__(self, backbone: nn.Module, num_classes: int, proj_dim: int | None = 128) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"CAMNet: num_classes must be >= 1, got {num_classes}")
        if proj_dim is not None and proj_dim < 1:
            raise ValueError(f"CAMNet: proj_dim must be >= 1, got {proj_dim}")
        out_channels = getattr(backbone, "out_channels", None)
        if not out_channels:
            raise ValueError("CAMNet: the backbone must expose a non-empty out_channels list")
        in_channels = out_channels[-1]
        self.backbone = backbone
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(in_channels, num_classes + 1, kernel_size=1, bias=False)
        self.projector = (
            nn.Conv2d(in_channels, proj_dim, kernel_size=1, bias=False) if proj_dim is not None else None
        )
        # the release initialises both new layers with Xavier-uniform
        nn.init.xavier_uniform_(self.classifier.weight)
        if self.projector is not None:
            nn.init.xavier_uniform_(self.projector.weight)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images`` (B, 3, H, W) -> ``"cam"`` (B, C+1, h, w) and, with a projector, ``"features"``
        (B, Dproj, h, w)."""
        features = self.backbone(images)[-1]
        outputs = {"cam": self.classifier(features)}
        if self.projector is not None:
            outputs["features"] = F.relu(self.projector(features))
        return outputs

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """Raw foreground CAMs ``(B, C, h, w)`` (before ReLU / normalisation)."""
        return self.classifier(self.backbone(images)[-1])[:, 1:]

    def classification_loss(self, cam: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        """See :func:`cam_classification_loss`."""
        return cam_classification_loss(cam, tags)
