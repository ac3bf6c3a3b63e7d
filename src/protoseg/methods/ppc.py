"""PPC for WSSS (Du et al., CVPR 2022): pixel-to-prototype contrast between two views of a CAM network."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..fields import setting
from ..losses.ppc import MINING_MODES, PixelToPrototypeContrast
from ..models.cam import CAMNet
from .base import DatasetInfo, WeaklySupervisedMethod, build_backbone_from_config


@dataclass
class PPCConfig:
    """``model.ppc``: the views, pseudo labels, prototypes and contrast terms (docs/methods.md section 3)."""

    proj_dim: int = setting(128, minimum=1)  # channels of the projected features
    temperature: float = setting(0.1, greater_than=0.0)  # tau of the pixel-to-prototype softmax
    top_k: int = setting(32, minimum=1)  # pixels per prototype, over the whole batch
    bg_threshold: float = setting(0.2, minimum=0.0, maximum=1.0)  # background score of the pseudo labels
    cross_weight: float = setting(0.1, minimum=0.0)  # on L_cp + L_cc
    intra_weight: float = setting(0.1, minimum=0.0)  # on L_intra
    mining: str = setting("paper", choices=MINING_MODES)  # released: the release's rank window
    scale_factor: float = setting(0.3, greater_than=0.0, maximum=1.0)  # target view / source view size
    target_size: int | None = setting(None, minimum=1)  # fixed target view side (128 in the release)


class PPCMethod(WeaklySupervisedMethod):
    """CAM training regularised by pixel-to-prototype contrast between two views (PPC, Sec. 3.4).

    The source view S is the batch; the target view T is S resized bilinearly (align_corners=False) by
    ``scale_factor`` (or to ``target_size`` when given; the release resizes 448 -> 128). Both views go
    through the network separately; the source's CAM and projected features are resized bilinearly
    (align_corners=False; the release uses True) to the target's feature size so that pixels correspond.

    ``loss = (cls(S) + cls(T)) / 2 + contrast`` as in the release, where ``contrast`` is
    ``cross_weight * (cp + cc) + intra_weight * intra`` from :class:`PixelToPrototypeContrast`.

    Args:
        network: the CAM network (with a projector).
        contrast: the contrast module (its weights, mining mode and generator).
        scale_factor: target/source size ratio (0.3 ~ the release's 128/448).
        target_size: fixed target image side (overrides ``scale_factor``; 128 reproduces the release).
    """

    name: ClassVar[str] = "ppc"
    section: ClassVar[tuple[str, type]] = ("ppc", PPCConfig)
    reads: ClassVar[tuple[str, ...]] = ("ppc",)

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
        if network.projector is None:
            raise ValueError("PPC needs a CAM network with a projector (CAMNet(..., proj_dim=128))")
        self.network = network
        self.contrast = contrast
        self.scale_factor = scale_factor
        self.target_size = target_size
        self.num_classes = network.num_classes

    @classmethod
    def from_config(cls, model: Any, dataset: DatasetInfo, seed: int = 0) -> PPCMethod:
        section = model.ppc
        network = CAMNet(build_backbone_from_config(model), cls.output_classes(dataset), section.proj_dim)
        contrast = PixelToPrototypeContrast(
            temperature=section.temperature,
            top_k=section.top_k,
            bg_threshold=section.bg_threshold,
            cross_weight=section.cross_weight,
            intra_weight=section.intra_weight,
            mining=section.mining,
        )
        return cls(network, contrast, section.scale_factor, section.target_size)

    def target_view(self, images: torch.Tensor) -> torch.Tensor:
        """The target view ``(B, 3, H', W')`` of the source ``images`` ``(B, 3, H, W)``."""
        if self.target_size is not None:
            size = (self.target_size, self.target_size)
        else:
            size = tuple(max(1, round(side * self.scale_factor)) for side in images.shape[-2:])
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)

    def forward(self, batch: Mapping[str, torch.Tensor], iteration: int = 0) -> dict[str, torch.Tensor]:
        images, tags = batch["image"], batch["tags"]
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
