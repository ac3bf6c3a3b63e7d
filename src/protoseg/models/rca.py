"""RCA's CAM network (Zhou et al., CVPR 2022): backbone -> first CAM head P, semantic aggregation ->
final CAM head O. The training objective around it is :class:`protoseg.methods.rca.RCAMethod`.

Differences from the authors' release (deliberate, see docs/methods.md section 4): one 1x1 conv (no
bias) per CAM head over the C foreground classes (the release stacks three 3x3 convs before each
head, one stack per class in O); there is no background channel.
"""

from __future__ import annotations

import torch
from torch import nn

from .aggregation import SemanticAggregation

REGION_MASK_MODES = ("paper", "released")


class RCANetwork(nn.Module):
    """Backbone -> ``F`` (last level, D channels) -> P (first CAM head) and O (final CAM head).

    ``P = conv1x1(F)``, ``F_hat = SemanticAggregation(F)``, ``O = conv1x1(F_hat)``; both heads give
    the C foreground classes only (no background channel, as in the release); the background is
    decided by thresholding at CAM inference.

    ``region_mask="paper"``: ``M_l = 1(P_l > mean_xy P_l)`` (RCA pseudo-region representation);
    ``"released"``: the same test on ``softmax_l(P)`` (the release thresholds class-softmaxed maps).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_prototypes: int = 10,
        aggregation: str = "paper",
        attention_scale: float = 1.0,
        region_mask: str = "paper",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"RCANetwork: num_classes must be >= 1, got {num_classes}")
        if region_mask not in REGION_MASK_MODES:
            raise ValueError(
                f"RCANetwork: region_mask must be one of {REGION_MASK_MODES}, got '{region_mask}'"
            )
        channels = getattr(backbone, "out_channels", None)
        if not channels:
            raise ValueError("RCANetwork: the backbone must expose out_channels: list[int]")
        self.backbone = backbone
        self.num_classes = num_classes
        self.feature_dim = int(channels[-1])
        self.region_mask = region_mask
        self.aux_head = nn.Conv2d(self.feature_dim, num_classes, 1, bias=False)
        self.aggregation = SemanticAggregation(
            self.feature_dim, num_classes, num_prototypes, mode=aggregation, attention_scale=attention_scale
        )
        self.head = nn.Conv2d(self.aggregation.out_channels, num_classes, 1, bias=False)
        # as the CAM baseline's classifier (the release draws N(0, 0.01))
        nn.init.xavier_uniform_(self.aux_head.weight)
        nn.init.xavier_uniform_(self.head.weight)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images (B, 3, H, W)`` -> dict of ``features`` F ``(B, D, h, w)``, ``aux_cams`` P, ``cams`` O.

        P and O are ``(B, C, h, w)`` raw foreground CAMs at feature resolution.
        """
        features = self.backbone(images)[-1]
        aux_cams = self.aux_head(features)
        cams = self.head(self.aggregation(features))
        return {"features": features, "aux_cams": aux_cams, "cams": cams}

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """Raw foreground CAMs from the final head O, ``(B, C, h, w)`` at feature resolution."""
        return self.forward(images)["cams"]

    @torch.no_grad()
    def region_masks(self, aux_cams: torch.Tensor) -> torch.Tensor:
        """``aux_cams`` P ``(B, C, h, w)`` -> binary float masks ``M_l = 1(P_l > mean(P_l))``, detached."""
        maps = aux_cams.detach().float()
        if self.region_mask == "released":
            maps = maps.softmax(dim=1)
        return (maps > maps.mean(dim=(2, 3), keepdim=True)).float()
