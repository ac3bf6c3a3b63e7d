"""The baseline: a segmentor with a learnable linear classifier, trained with cross-entropy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..fields import setting
from ..losses.segmentation import SegmentationCELoss
from ..models.heads.linear import LinearHead
from .base import DatasetInfo, SegmentationMethod, build_segmentor, ce_class_weights


@dataclass
class LinearConfig:
    """``model.linear``: the baseline's classifier."""

    dropout: float = setting(0.0, minimum=0.0, less_than=1.0)  # Dropout2d before the 1x1 classifier


class LinearMethod(SegmentationMethod):
    """Backbone + decoder + 1x1 conv classifier; ``loss = CE`` (logits upsampled to the labels)."""

    name: ClassVar[str] = "linear"
    section: ClassVar[tuple[str, type]] = ("linear", LinearConfig)
    reads: ClassVar[tuple[str, ...]] = ("linear",)

    def __init__(self, network, criterion: SegmentationCELoss | None = None) -> None:
        super().__init__()
        self.network = network
        self.criterion = criterion or SegmentationCELoss()

    @classmethod
    def from_config(cls, model: Any, dataset: DatasetInfo, seed: int = 0) -> LinearMethod:
        classes = cls.output_classes(dataset)
        network = build_segmentor(
            model,
            classes,
            lambda decoder: LinearHead(decoder.out_channels, classes, dropout=model.linear.dropout),
        )
        return cls(network, SegmentationCELoss(class_weights=ce_class_weights(model, classes)))

    def forward(self, batch: Mapping[str, torch.Tensor], iteration: int = 0) -> dict[str, torch.Tensor]:
        return self.criterion(self.network(batch["image"], batch["mask"]), batch["mask"], iteration)
