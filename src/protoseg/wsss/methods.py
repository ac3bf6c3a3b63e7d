"""WSSS training methods: the CAM baseline and PPC (pixel-to-prototype contrast, CVPR 2022).

The WSSS method contract (RCA in ``protoseg.wsss.rca`` follows it too). A method is an ``nn.Module``
wrapping a network, with:

- ``forward(images (B, 3, H, W), tags (B, C) float multi-hot over the FOREGROUND classes,
  iteration: int = 0) -> dict[str, Tensor]``: ``"loss"``, the scalar total with a gradient path, and one
  entry per term for logging (``"cls"``, ``"cp"``, ``"cc"``, ``"intra"``, ...; detached);
- ``cams(images (B, 3, H, W)) -> (B, C, h, w)``: raw foreground class activation maps (before ReLU and
  normalisation) at feature resolution; multi-scale CAM inference sums them over scales and flips,
  applies ReLU, max-normalises per class and restricts them to the tags;
- ``num_classes``: the number of foreground classes C.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from protoseg.losses.ppc import PixelToPrototypeContrast
from protoseg.models.cam import CAMNet

WSSS_METHODS = ("cam", "ppc")


class CAMBaseline(nn.Module):
    """Plain CAM training: ``loss = cls``, the multilabel soft margin loss on GAP(foreground CAM)."""

    def __init__(self, network: CAMNet) -> None:
        super().__init__()
        self.network = network
        self.num_classes = network.num_classes

    def forward(
        self, images: torch.Tensor, tags: torch.Tensor, iteration: int = 0
    ) -> dict[str, torch.Tensor]:
        classification = self.network.classification_loss(self.network(images)["cam"], tags)
        return {"loss": classification, "cls": classification.detach()}

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.cams(images)


class PPCMethod(nn.Module):
    """CAM training regularised by pixel-to-prototype contrast between two views (PPC, Sec. 3.4).

    The source view S is the batch; the target view T is S resized bilinearly (align_corners=False) by
    ``scale_factor`` (or to ``target_size`` when given; the release resizes 448 -> 128). Both views go
    through the network separately; the source's CAM and projected features are resized bilinearly
    (align_corners=False; the release uses True) to the target's feature size so that pixels correspond.

    ``loss = (cls(S) + cls(T)) / 2 + contrast`` as in the release, where ``contrast`` is
    ``cross_weight * (cp + cc) + intra_weight * intra`` from :class:`PixelToPrototypeContrast`.

    Args:
        network: the CAM network.
        contrast: the contrast module (its weights, mining mode and generator).
        scale_factor: target/source size ratio (0.3 ~ the release's 128/448).
        target_size: fixed target image side (overrides ``scale_factor``; 128 reproduces the release).
    """

    def __init__(
        self,
        network: CAMNet,
        contrast: PixelToPrototypeContrast,
        scale_factor: float = 0.3,
        target_size: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 < scale_factor <= 1:
            raise ValueError(f"PPC scale_factor must be in (0, 1], got {scale_factor}")
        if target_size is not None and target_size < 1:
            raise ValueError(f"PPC target_size must be >= 1, got {target_size}")
        self.network = network
        self.contrast = contrast
        self.scale_factor = scale_factor
        self.target_size = target_size
        self.num_classes = network.num_classes

    def target_view(self, images: torch.Tensor) -> torch.Tensor:
        """The target view ``(B, 3, H', W')`` of the source ``images`` ``(B, 3, H, W)``."""
        if self.target_size is not None:
            size = (self.target_size, self.target_size)
        else:
            size = tuple(max(1, round(side * self.scale_factor)) for side in images.shape[-2:])
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)

    def forward(
        self, images: torch.Tensor, tags: torch.Tensor, iteration: int = 0
    ) -> dict[str, torch.Tensor]:
        source = self.network(images)
        target = self.network(self.target_view(images))
        classification = 0.5 * (
            self.network.classification_loss(source["cam"], tags)
            + self.network.classification_loss(target["cam"], tags)
        )
        size = target["cam"].shape[-2:]
        cam_source = F.interpolate(source["cam"], size=size, mode="bilinear", align_corners=False)
        features_source = F.interpolate(source["features"], size=size, mode="bilinear", align_corners=False)
        terms = self.contrast(cam_source, features_source, target["cam"], target["features"], tags)
        return {
            "loss": classification + terms["loss"],
            "cls": classification.detach(),
            "cp": terms["cp"],
            "cc": terms["cc"],
            "intra": terms["intra"],
        }

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.cams(images)


_PPC_CONTRAST_OPTIONS = (
    "temperature",
    "top_k",
    "bg_threshold",
    "cross_weight",
    "intra_weight",
    "mining",
    "generator",
)
_PPC_VIEW_OPTIONS = ("scale_factor", "target_size")


def build_wsss_method(name: str, network: CAMNet, **options) -> nn.Module:
    """Build a WSSS method by name.

    Args:
        name: ``"cam"`` (no options) or ``"ppc"`` (options: the arguments of
            :class:`PixelToPrototypeContrast` and ``scale_factor`` / ``target_size`` of :class:`PPCMethod`).
        network: the CAM network to wrap.

    Example:
        >>> method = build_wsss_method("ppc", CAMNet(backbone, 20), mining="released", top_k=32)
    """
    if name == "cam":
        if options:
            raise ValueError(f"WSSS method 'cam' takes no options, got {sorted(options)}")
        return CAMBaseline(network)
    if name == "ppc":
        unknown = sorted(set(options) - set(_PPC_CONTRAST_OPTIONS) - set(_PPC_VIEW_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for WSSS method 'ppc'; valid: "
                f"{sorted(_PPC_CONTRAST_OPTIONS + _PPC_VIEW_OPTIONS)}"
            )
        contrast_options = {key: value for key, value in options.items() if key in _PPC_CONTRAST_OPTIONS}
        view_options = {key: value for key, value in options.items() if key in _PPC_VIEW_OPTIONS}
        contrast = PixelToPrototypeContrast(**contrast_options)
        return PPCMethod(network, contrast, **view_options)
    raise ValueError(f"unknown WSSS method '{name}'; valid names: {list(WSSS_METHODS)}")
