"""SEAM's network (Wang et al., "Self-supervised Equivariant Attention Mechanism for Weakly Supervised
Semantic Segmentation", CVPR 2020): the CAM network plus the pixel correlation module (PCM), which
refines the CAM by the pixels' feature affinities.

With ResNet-38 the release feeds the PCM the image and two mid-level maps (conv4, conv5, 512 and 1024
channels, at the CAM's stride). A generic backbone (``features_only`` levels, finest first) gives the
two levels before the last instead; they are resized (bilinear) to the CAM grid and detached, as
released. The training losses are in :mod:`protoseg.losses.seam`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cam import CAMNet

PCM_EPSILON = 1e-5


@torch.no_grad()
def pcm_seed(cam: torch.Tensor) -> torch.Tensor:
    """The CAM the PCM propagates (no gradient), from the raw ``cam`` ``(B, C+1, h, w)``:

    ``n_c = relu(relu(cam_c) - 1e-5) / (max_xy relu(cam_c) + 1e-5)`` for every channel; then the background
    channel becomes ``1 - max_c n_c`` over the foreground and each foreground channel keeps only the
    pixels where it is the foreground maximum (the others are 0).
    """
    rectified = cam.detach().float().relu()
    maximum = rectified.flatten(2).amax(dim=2)[:, :, None, None] + PCM_EPSILON
    normalized = (rectified - PCM_EPSILON).relu() / maximum
    foreground = normalized[:, 1:]
    top = foreground.amax(dim=1, keepdim=True)
    background = 1 - top
    foreground = torch.where(foreground < top, torch.zeros_like(foreground), foreground)
    return torch.cat([background, foreground], dim=1)


class PixelCorrelationModule(nn.Module):
    """PCM (SEAM Eq. 6): ``y_j = sum_i x_i relu(f_i . f_j) / sum_i relu(f_i . f_j)`` with
    ``f = L2-normalise(f9(concat(image, relu(f8_3(low)), relu(f8_4(high)))))``.

    Args:
        low_channels, high_channels: channels of the two mid-level maps (ResNet-38: 512 and 1024).

    The 1x1 convolutions (no bias) map them to 64 and 128 channels and the concatenation with the
    image to 192, initialised as released (Kaiming-normal, and Xavier-uniform with gain 4 for ``f9``).
    """

    def __init__(self, low_channels: int, high_channels: int) -> None:
        super().__init__()
        self.f8_3 = nn.Conv2d(low_channels, 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(high_channels, 128, 1, bias=False)
        self.f9 = nn.Conv2d(192 + 3, 192, 1, bias=False)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)

    def affinity(self, images: torch.Tensor, low: torch.Tensor, high: torch.Tensor, size) -> torch.Tensor:
        """``(B, hw, hw)`` affinities ``A_ij = relu(f_i . f_j) / (sum_i relu(f_i . f_j) + 1e-5)`` on the
        ``size`` grid; ``low`` and ``high`` are detached and resized to it (bilinear), the image too
        (bilinear, ``align_corners=True`` as released)."""
        low = F.interpolate(low.detach(), size=size, mode="bilinear", align_corners=False)
        high = F.interpolate(high.detach(), size=size, mode="bilinear", align_corners=False)
        image = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        features = torch.cat([image.to(low.dtype), F.relu(self.f8_3(low)), F.relu(self.f8_4(high))], dim=1)
        features = self.f9(features).flatten(2)
        features = features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + PCM_EPSILON)
        affinity = F.relu(features.transpose(1, 2) @ features)
        return affinity / (affinity.sum(dim=1, keepdim=True) + PCM_EPSILON)

    def forward(self, seed: torch.Tensor, images: torch.Tensor, low: torch.Tensor, high: torch.Tensor):
        """``seed`` ``(B, K, h, w)`` (:func:`pcm_seed` of the CAM) -> refined ``(B, K, h, w)``."""
        batch, channels, height, width = seed.shape
        affinity = self.affinity(images, low, high, (height, width))
        refined = seed.to(affinity.dtype).flatten(2) @ affinity
        return refined.view(batch, channels, height, width)


class SEAMNet(CAMNet):
    """:class:`~protoseg.models.cam.CAMNet` + PCM: ``forward`` adds ``"refined"``, the PCM-refined CAM
    ``(B, C+1, h, w)`` (the release's ``cam_rv`` at feature resolution), and :meth:`cams` returns its
    foreground channels (what SEAM and PPC-on-SEAM infer from).

    The backbone must give at least three levels; the two before the last feed the PCM.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        proj_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(backbone, num_classes, proj_dim, dropout)
        channels = list(backbone.out_channels)
        if len(channels) < 3:
            raise ValueError(
                f"SEAMNet: the PCM needs a backbone with at least 3 feature levels, got {len(channels)}"
            )
        self.pcm = PixelCorrelationModule(channels[-3], channels[-2])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images`` (B, 3, H, W) -> ``"cam"`` and ``"refined"`` (B, C+1, h, w) [+ ``"features"``]."""
        levels = self.backbone(images)
        outputs = self.head(levels[-1])
        outputs["refined"] = self.pcm(pcm_seed(outputs["cam"]), images, levels[-3], levels[-2])
        return outputs

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """Foreground channels of the PCM-refined CAM ``(B, C, h, w)`` (non-negative)."""
        levels = self.backbone(images)
        cam = self.classifier(self._dropped(levels[-1]))
        return self.pcm(pcm_seed(cam), images, levels[-3], levels[-2])[:, 1:]
