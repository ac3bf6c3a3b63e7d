"""RCA's CAM network (Zhou et al., CVPR 2022): backbone -> first CAM head P, semantic aggregation ->
final CAM head O. The training objective around it is :class:`protoseg.methods.rca.RCAMethod`.

The heads are one 1x1 conv (no bias) each by default (``head="linear"``); ``head="released"`` is the
release's: three 3x3 conv + ReLU layers then a 1x1 conv, one such stack for P and one per class for O
(computed as grouped convolutions). ``query_projection="released"`` adds the release's ``extra_F`` (3x3
conv, BatchNorm, ReLU, 3x3 conv), whose output, not F, is pooled into the contrast's region queries. With
``background=True`` (the EPS base) both heads give a background channel first; otherwise the C
foreground classes only, as released.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .aggregation import SemanticAggregation
from .cam import CAM_ACTIVATIONS, cam_classification_loss

REGION_MASK_MODES = ("paper", "released")
HEAD_MODES = ("linear", "released")
QUERY_PROJECTIONS = ("none", "released")


def _released_init(module: nn.Module) -> None:
    """The release's initialisation: N(0, 0.01) convolution weights (biases as PyTorch draws them),
    BatchNorm weight 1 and bias 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, 0.0, 0.01)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


class ReleasedHead(nn.Sequential):
    """The release's CAM head: ``[3x3 conv (width) + ReLU] x 3 -> 1x1 conv`` to ``outputs`` channels.

    ``per_class=True`` is the release's final head (``extra_convs0..19``): one such stack per output
    channel, each ending in one channel, computed as one convolution of ``outputs * width`` channels
    followed by grouped ones (``groups = outputs``), which is the same map.
    """

    def __init__(self, in_channels: int, outputs: int, width: int, per_class: bool = False) -> None:
        groups = outputs if per_class else 1
        hidden = width * groups
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, outputs, 1, groups=groups),
        )
        _released_init(self)


class QueryProjection(nn.Sequential):
    """The release's ``extra_F``: ``3x3 conv -> BatchNorm -> ReLU -> 3x3 conv``, D -> D channels."""

    def __init__(self, dim: int) -> None:
        super().__init__(
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, padding=1),
        )
        _released_init(self)


class RCANetwork(nn.Module):
    """Backbone -> ``F`` (last level, D channels) -> P (first CAM head) and O (final CAM head).

    ``P = head_P(F)``, ``F_hat = SemanticAggregation(F)``, ``O = head_O(F_hat)``; the heads give the C
    foreground classes (no background channel, as in the release), or a background channel first and
    then the C classes with ``background=True``. ``cams`` gives O's foreground maps (``cam_activation``
    ``"softmax"``: softmax probabilities against the background channel, EPS's inference).

    ``region_mask="paper"``: ``M_l = 1(P_l > mean_xy P_l)`` (RCA pseudo-region representation);
    ``"released"``: the same test on ``softmax_l(P)`` (the release thresholds class-softmaxed maps).
    ``attention`` and ``attention_scale`` are the paper-mode aggregation's similarity
    (:class:`SemanticAggregation`); ``dropout`` drops channels of F before the heads and the aggregation
    (a base recipe's ``dropout``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_prototypes: int = 10,
        aggregation: str = "paper",
        attention_scale: float = 1.0,
        region_mask: str = "paper",
        attention: str = "dot",
        head: str = "linear",
        query_projection: str = "none",
        background: bool = False,
        cam_activation: str = "none",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"RCANetwork: num_classes must be >= 1, got {num_classes}")
        for name, value, choices in (
            ("region_mask", region_mask, REGION_MASK_MODES),
            ("head", head, HEAD_MODES),
            ("query_projection", query_projection, QUERY_PROJECTIONS),
            ("cam_activation", cam_activation, CAM_ACTIVATIONS),
        ):
            if value not in choices:
                raise ValueError(f"RCANetwork: {name} must be one of {choices}, got '{value}'")
        if cam_activation == "softmax" and not background:
            raise ValueError("RCANetwork: softmax CAMs need the background channel (background=True)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"RCANetwork: dropout must be in [0, 1), got {dropout}")
        channels = getattr(backbone, "out_channels", None)
        if not channels:
            raise ValueError("RCANetwork: the backbone must expose out_channels: list[int]")
        self.backbone = backbone
        self.num_classes = num_classes
        self.feature_dim = int(channels[-1])
        self.region_mask = region_mask
        self.background = background
        self.cam_activation = cam_activation
        outputs = num_classes + int(background)
        if head == "linear":
            self.aux_head = nn.Conv2d(self.feature_dim, outputs, 1, bias=False)
        self.aggregation = SemanticAggregation(
            self.feature_dim,
            num_classes,
            num_prototypes,
            mode=aggregation,
            attention_scale=attention_scale,
            attention=attention,
        )
        if head == "linear":
            self.head = nn.Conv2d(self.aggregation.out_channels, outputs, 1, bias=False)
            # as the CAM baseline's classifier (the release draws N(0, 0.01))
            nn.init.xavier_uniform_(self.aux_head.weight)
            nn.init.xavier_uniform_(self.head.weight)
        else:
            self.aux_head = ReleasedHead(self.feature_dim, outputs, self.feature_dim)
            self.head = ReleasedHead(self.aggregation.out_channels, outputs, self.feature_dim, per_class=True)
        self.query_projection = QueryProjection(self.feature_dim) if query_projection == "released" else None
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else None

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images (B, 3, H, W)`` -> dict of ``features`` F ``(B, D, h, w)``, ``aux_cams`` P, ``cams`` O
        and, with the query projection, ``queries`` ``(B, D, h, w)`` (what the contrast pools).

        P and O are ``(B, C[+1], h, w)`` raw CAMs at feature resolution.
        """
        features = self.backbone(images)[-1]
        dropped = self.dropout(features) if self.dropout is not None else features
        aux_cams = self.aux_head(dropped)
        cams = self.head(self.aggregation(dropped))
        outputs = {"features": features, "aux_cams": aux_cams, "cams": cams}
        if self.query_projection is not None:
            outputs["queries"] = self.query_projection(features)
        return outputs

    def activate(self, cams: torch.Tensor) -> torch.Tensor:
        """Foreground maps ``(B, C, h, w)`` of a head's raw CAMs: the CAMs themselves without a background
        channel; with one, the foreground channels (``cam_activation="none"``) or their softmax
        probabilities (``"softmax"``)."""
        if not self.background:
            return cams
        if self.cam_activation == "softmax":
            return cams.float().softmax(dim=1)[:, 1:]
        return cams[:, 1:]

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """Foreground CAMs from the final head O, ``(B, C, h, w)`` at feature resolution (raw without a
        background channel)."""
        return self.activate(self.forward(images)["cams"])

    def classification_loss(self, cams: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        """Multilabel soft margin loss of the global-average-pooled foreground channels of ``cams``."""
        if self.background:
            return cam_classification_loss(cams, tags)
        return F.multilabel_soft_margin_loss(cams.float().mean(dim=(2, 3)), tags.float())

    def scores(self, cams: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` class probabilities ``sigmoid(GAP(foreground channels))`` of a head's raw CAMs."""
        foreground = cams[:, 1:] if self.background else cams
        return torch.sigmoid(foreground.float().mean(dim=(2, 3)))

    def pretrained_lr_parameters(self) -> list[nn.Parameter]:
        """The parameters the release's learning-rate groups keep at 1x / 2x: all but the ``extra*`` layers
        (the heads and the query projection), i.e. the backbone and the aggregation's projections."""
        return [*self.backbone.parameters(), *self.aggregation.parameters()]

    @torch.no_grad()
    def region_masks(self, aux_cams: torch.Tensor) -> torch.Tensor:
        """``aux_cams`` P ``(B, C[+1], h, w)`` -> binary float masks of the C foreground classes,
        ``M_l = 1(P_l > mean(P_l))`` (``released``: on the softmax over P's channels), detached."""
        maps = aux_cams.detach().float()
        if self.region_mask == "released":
            maps = maps.softmax(dim=1)
        if self.background:
            maps = maps[:, 1:]
        return (maps > maps.mean(dim=(2, 3), keepdim=True)).float()
