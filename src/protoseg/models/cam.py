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


CAM_ACTIVATIONS = ("none", "softmax")


class CAMNet(nn.Module):
    """Backbone + 1x1 CAM classifier (C+1 channels, no bias) + 1x1 projector (no bias) + ReLU.

    Args:
        backbone: module whose ``forward(images)`` returns a list of feature maps and which has
            ``out_channels: list[int]``; the last level is used.
        num_classes: foreground classes C (the CAM has C+1 channels, channel 0 = background).
        proj_dim: channels of the projected features (128 in PPC); None: no projector (the plain
            CAM network), ``forward`` then returns the CAM only.
        dropout: ``Dropout2d`` probability on the last-level features, before the classifier and the
            projector (the SEAM / PPC releases: 0.5); 0: none.
        cam_activation: what :meth:`cams` applies to the C+1 CAM channels before keeping the C foreground
            ones: ``"none"`` (raw CAMs) or ``"softmax"`` (EPS: foreground probabilities against the
            background channel).

    Example:
        >>> network = CAMNet(TinyBackbone(), num_classes=20)
        >>> outputs = network(images)  # {"cam": (B, 21, h, w), "features": (B, 128, h, w)}
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        proj_dim: int | None = 128,
        dropout: float = 0.0,
        cam_activation: str = "none",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"CAMNet: num_classes must be >= 1, got {num_classes}")
        if proj_dim is not None and proj_dim < 1:
            raise ValueError(f"CAMNet: proj_dim must be >= 1, got {proj_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"CAMNet: dropout must be in [0, 1), got {dropout}")
        if cam_activation not in CAM_ACTIVATIONS:
            raise ValueError(
                f"CAMNet: cam_activation must be one of {CAM_ACTIVATIONS}, got '{cam_activation}'"
            )
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
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else None
        self.cam_activation = cam_activation

    def _dropped(self, features: torch.Tensor) -> torch.Tensor:
        return self.dropout(features) if self.dropout is not None else features

    def head(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Last-level ``features`` -> ``"cam"`` and, with a projector, ``"features"`` (after the dropout)."""
        features = self._dropped(features)
        outputs = {"cam": self.classifier(features)}
        if self.projector is not None:
            outputs["features"] = F.relu(self.projector(features))
        return outputs

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images`` (B, 3, H, W) -> ``"cam"`` (B, C+1, h, w) and, with a projector, ``"features"``
        (B, Dproj, h, w)."""
        return self.head(self.backbone(images)[-1])

    def activate(self, cam: torch.Tensor) -> torch.Tensor:
        """The foreground maps ``(B, C, h, w)`` CAM inference sums over scales, from the C+1-channel
        ``cam``: raw, or softmax probabilities (``cam_activation``)."""
        if self.cam_activation == "softmax":
            return cam.float().softmax(dim=1)[:, 1:]
        return cam[:, 1:]

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """Foreground CAMs ``(B, C, h, w)`` of :meth:`activate` (raw by default: before ReLU /
        normalisation)."""
        return self.activate(self.classifier(self._dropped(self.backbone(images)[-1])))

    def classification_loss(self, cam: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        """See :func:`cam_classification_loss`."""
        return cam_classification_loss(cam, tags)
