"""The weakly supervised baseline: a CAM classification network trained from image-level tags."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..models.cam import CAMNet
from .base import DatasetInfo, WeaklySupervisedMethod, build_backbone_from_config


class CAMMethod(WeaklySupervisedMethod):
    """Plain CAM training: ``loss = cls``, the multilabel soft margin loss on GAP(foreground CAM)."""

    name: ClassVar[str] = "cam"

    def __init__(self, network: CAMNet) -> None:
        super().__init__()
        self.network = network
        self.num_classes = network.num_classes

    @classmethod
    def from_config(cls, model: Any, dataset: DatasetInfo, seed: int = 0) -> CAMMethod:
        network = CAMNet(build_backbone_from_config(model), cls.output_classes(dataset), proj_dim=None)
        return cls(network)

    def forward(self, batch: Mapping[str, torch.Tensor], iteration: int = 0) -> dict[str, torch.Tensor]:
        classification = self.network.classification_loss(self.network(batch["image"])["cam"], batch["tags"])
        return {"loss": classification, "cls": classification.detach()}
