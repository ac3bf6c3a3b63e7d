"""ProtoSeg + ContrastiveSeg's pixel contrast on the same decoder features (complementary views)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..losses.contrast_seg import ContrastSegLoss
from ..losses.protoseg import ProtoSegLoss
from ..models.heads.protoseg import PrototypeUpdate
from ..models.heads.protoseg_contrast import ProtoSegContrastHead
from ..prototypes.pixel_queue import PixelQueue
from .base import DatasetInfo, SegmentationMethod, build_segmentor, ce_class_weights
from .contrast import PixelMemoryWriter, contrast_forward, contrast_loss, pixel_memory, projection_channels
from .protoseg import protoseg_head_options, protoseg_loss


class ProtoSegContrastMethod(SegmentationMethod):
    """``loss = CE + w_ppc PPC + w_ppd PPD + weight * pixel contrast`` (ProtoSeg's CE only; the
    contrast from ``model.contrast.start_iter``). Reads ``model.protoseg`` and ``model.contrast``
    (but its ``classifier_dropout``: there is no linear classifier)."""

    name: ClassVar[str] = "protoseg_contrast"
    reads: ClassVar[tuple[str, ...]] = ("protoseg", "contrast")
    ignores: ClassVar[dict[str, tuple[str, ...]]] = {"contrast": ("classifier_dropout",)}
    find_unused_parameters: ClassVar[bool] = True

    def __init__(
        self,
        network,
        protoseg_criterion: ProtoSegLoss,
        contrast_criterion: ContrastSegLoss,
        memory: PixelQueue | None = None,
        projection_input: str = "decoder",
    ) -> None:
        super().__init__()
        self.network = network
        self.projection_input = projection_input
        self.protoseg_criterion = protoseg_criterion
        self.contrast_criterion = contrast_criterion
        self.memory = memory
        self._writer = PixelMemoryWriter()
        self._pending: PrototypeUpdate | None = None

    @classmethod
    def from_config(cls, model: Any, dataset: DatasetInfo, seed: int = 0) -> ProtoSegContrastMethod:
        classes = cls.output_classes(dataset)
        options = protoseg_head_options(model.protoseg)
        section = model.contrast
        network = build_segmentor(
            model,
            classes,
            lambda decoder: ProtoSegContrastHead(
                decoder.out_channels,
                classes,
                options,
                section.proj_dim,
                projection_channels=projection_channels(decoder, section.projection_input),
            ),
        )
        return cls(
            network,
            protoseg_loss(model.protoseg, ce_class_weights(model, classes)),
            contrast_loss(section, seed, ce_weight=0.0),
            pixel_memory(section, classes),
            section.projection_input,
        )

    def forward(self, batch: Mapping[str, torch.Tensor], iteration: int = 0) -> dict[str, torch.Tensor]:
        target = batch["mask"]
        outputs = contrast_forward(self.network, batch["image"], target, self.projection_input)
        self._pending = outputs.get("prototype_update")
        self._writer.hold(outputs, target)
        terms = self.protoseg_criterion(outputs, target, iteration)
        contrast = self.contrast_criterion(outputs, target, iteration, self.memory)
        return {**terms, "loss": terms["loss"] + contrast["loss"], "contrast": contrast["contrast"]}

    def after_step(self, iteration: int) -> None:
        if self._pending is not None:
            self.network.head.update_prototypes(self._pending)
            self._pending = None
        self._writer.write(self.memory, self.contrast_criterion.generator)
