"""SEAM (Wang et al., CVPR 2020): siamese views, equivariant regularisation, the pixel correlation module
and equivariant cross regularisation; CAMs inferred from the PCM-refined CAM."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..fields import setting
from ..losses.seam import seam_losses
from ..models.seam import SEAMNet
from ..ops.cams import CAM_NORMALISATIONS
from .base import DatasetInfo, build_backbone_from_config
from .wsss_base import LR_GROUP_MODES, BaseRecipe, BaseView, WSSSBase, recipe_of


@dataclass
class SEAMConfig(BaseRecipe):
    """``model.seam``: SEAM's losses and its target view when it trains alone; the recipe defaults are
    the release's (frozen BatchNorm and stem, 1x / 2x / 10x / 20x learning rates, Dropout2d(0.5), min-max
    normalised inference), without its momentum quirk."""

    freeze_bn: bool = True
    freeze_stem: bool = True
    lr_groups: str = setting("released", choices=LR_GROUP_MODES)
    dropout: float = setting(0.5, minimum=0.0, less_than=1.0)
    cam_normalisation: str = setting("minmax", choices=CAM_NORMALISATIONS)
    scale_factor: float = setting(0.3, greater_than=0.0, maximum=1.0)  # target view / source (alone)
    er_weight: float = setting(1.0, minimum=0.0)  # equivariant regularisation
    ecr_weight: float = setting(1.0, minimum=0.0)  # equivariant cross regularisation
    rvmin_weight: float = setting(1.0, minimum=0.0)  # adaptive min-pooling of the refined CAM
    ecr_fraction: float = setting(0.2, greater_than=0.0, maximum=1.0)  # top share of entries in the ECR


class SEAMMethod(WSSSBase):
    """SEAM's objective (:func:`protoseg.losses.seam.seam_losses`) over the batch and its target view (the
    batch resized bilinearly by ``scale_factor``; a plug-in gives its own):

    ``loss = cls + rvmin_weight * rvmin + er_weight * ER + ecr_weight * ECR``, the maps of each view
    upsampled (bilinear) to its image size first, as released.

    One view alone (no target) is not SEAM: :meth:`single_view_losses` refuses it.
    """

    name: ClassVar[str] = "seam"
    section: ClassVar[tuple[str, type]] = ("seam", SEAMConfig)
    reads: ClassVar[tuple[str, ...]] = ("seam",)

    def __init__(
        self,
        network: SEAMNet,
        recipe: BaseRecipe | None = None,
        scale_factor: float = 0.3,
        er_weight: float = 1.0,
        ecr_weight: float = 1.0,
        rvmin_weight: float = 1.0,
        ecr_fraction: float = 0.2,
    ) -> None:
        super().__init__(network, recipe)
        if not 0 < scale_factor <= 1:
            raise ValueError(f"SEAM scale_factor must be in (0, 1], got {scale_factor}")
        if not 0 < ecr_fraction <= 1:
            raise ValueError(f"SEAM ecr_fraction must be in (0, 1], got {ecr_fraction}")
        self.scale_factor = scale_factor
        self.er_weight = er_weight
        self.ecr_weight = ecr_weight
        self.rvmin_weight = rvmin_weight
        self.ecr_fraction = ecr_fraction

    @classmethod
    def build(
        cls, model: Any, dataset: DatasetInfo, seed: int = 0, proj_dim: int | None = None
    ) -> SEAMMethod:
        section = model.seam
        network = SEAMNet(
            build_backbone_from_config(model), cls.output_classes(dataset), proj_dim, dropout=section.dropout
        )
        return cls(
            network,
            recipe_of(section),
            scale_factor=section.scale_factor,
            er_weight=section.er_weight,
            ecr_weight=section.ecr_weight,
            rvmin_weight=section.rvmin_weight,
            ecr_fraction=section.ecr_fraction,
        )

    def target_view(self, images: torch.Tensor) -> torch.Tensor:
        """The batch resized by ``scale_factor`` (bilinear, ``align_corners=False``)."""
        size = tuple(max(1, round(side * self.scale_factor)) for side in images.shape[-2:])
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)

    def forward(self, batch: Mapping[str, torch.Tensor], iteration: int = 0) -> dict[str, torch.Tensor]:
        images = batch["image"]
        target_images = self.target_view(images)
        return self.pair_losses(batch, self.view(images), self.view(target_images), target_images)

    def single_view_losses(
        self, batch: Mapping[str, torch.Tensor], view: BaseView
    ) -> dict[str, torch.Tensor]:
        raise ValueError("SEAM trains on two views (the batch and its resized copy): use pair_losses")

    def pair_losses(
        self,
        batch: Mapping[str, torch.Tensor],
        source: BaseView,
        target: BaseView,
        target_images: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        source_size, target_size = batch["image"].shape[-2:], target_images.shape[-2:]

        def up(maps: torch.Tensor, size) -> torch.Tensor:
            return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)

        terms = seam_losses(
            up(source.cam, source_size),
            up(source.prototype_cam, source_size),
            up(target.cam, target_size),
            up(target.prototype_cam, target_size),
            batch["tags"],
            self.ecr_fraction,
        )
        loss = (
            terms["cls"]
            + self.rvmin_weight * terms["rvmin"]
            + self.er_weight * terms["er"]
            + self.ecr_weight * terms["ecr"]
        )
        return {"loss": loss, **{key: value.detach() for key, value in terms.items()}}
