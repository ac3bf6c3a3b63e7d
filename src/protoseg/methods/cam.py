"""The weakly supervised baseline and base: a CAM classification network trained from image-level tags."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..models.cam import CAMNet
from .base import DatasetInfo, build_backbone_from_config
from .wsss_base import BaseRecipe, BaseView, WSSSBase, recipe_of


@dataclass
class CAMConfig(BaseRecipe):
    """``model.cam``: the plain CAM network's recipe (:class:`~protoseg.methods.wsss_base.BaseRecipe`;
    the defaults are protoseg's: BatchNorm and stem trained, one learning rate, no dropout, max
    normalisation)."""


class ClassificationLosses:
    """The plain CAM network's losses as a base (``CAMMethod``, and ``OAAMethod``, which trains the same
    network): ``cls``, the multilabel soft margin loss on GAP of the foreground CAM; on two views, the
    mean of both."""

    def single_view_losses(
        self, batch: Mapping[str, torch.Tensor], view: BaseView
    ) -> dict[str, torch.Tensor]:
        classification = self.network.classification_loss(view.cam, batch["tags"])
        return {"loss": classification, "cls": classification.detach()}

    def pair_losses(
        self,
        batch: Mapping[str, torch.Tensor],
        source: BaseView,
        target: BaseView,
        target_images: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        tags = batch["tags"]
        classification = 0.5 * (
            self.network.classification_loss(source.cam, tags)
            + self.network.classification_loss(target.cam, tags)
        )
        return {"loss": classification, "cls": classification.detach()}


class CAMMethod(ClassificationLosses, WSSSBase):
    """Plain CAM training: ``loss = cls``, the multilabel soft margin loss on GAP(foreground CAM); on two
    views (a plug-in's) the mean of both views' ``cls``."""

    name: ClassVar[str] = "cam"
    section: ClassVar[tuple[str, type]] = ("cam", CAMConfig)
    reads: ClassVar[tuple[str, ...]] = ("cam",)

    def __init__(self, network: torch.nn.Module, recipe: BaseRecipe | None = None) -> None:
        super().__init__(network, recipe)

    @classmethod
    def build(cls, model: Any, dataset: DatasetInfo, seed: int = 0, proj_dim: int | None = None) -> CAMMethod:
        section = model.cam
        network = CAMNet(
            build_backbone_from_config(model), cls.output_classes(dataset), proj_dim, dropout=section.dropout
        )
        return cls.wrap(network, model)

    @classmethod
    def wrap(cls, network: torch.nn.Module, model: Any) -> CAMMethod:
        return cls(network, recipe_of(model.cam))

