"""ContrastiveSeg (Wang et al., ICCV 2021): supervised pixel contrast beside the linear classifier."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..fields import setting
from ..losses.contrast_seg import SAMPLERS, ContrastSegLoss
from ..models.heads.contrast import ContrastHead
from ..ops.random import SeededGenerator
from ..prototypes.pixel_queue import PixelQueue
from .base import DatasetInfo, SegmentationMethod, build_segmentor, ce_class_weights

PROJECTION_INPUTS = ("decoder", "backbone")


@dataclass
class ContrastConfig:
    """``model.contrast``: projection, anchor sampling, loss and memory (docs/methods.md section 2)."""

    proj_dim: int = setting(256, minimum=1)  # channels of the contrast embeddings
    # what the projection embeds: the decoder output (protoseg) or the concatenated backbone levels
    # before the decoder's fusion conv (the release, whose segmentation head holds that conv)
    projection_input: str = setting("decoder", choices=PROJECTION_INPUTS)
    classifier_dropout: float = setting(0.1, minimum=0.0, less_than=1.0)  # the release's Dropout2d(0.1)
    weight: float = setting(0.1, minimum=0.0)  # of the contrast loss beside CE
    start_iter: int = setting(5000, minimum=0)  # iterations before the contrast is computed (released 5000)
    temperature: float = setting(0.1, greater_than=0.0)
    base_temperature: float = setting(0.07, greater_than=0.0)
    max_samples: int = setting(1024, minimum=1)  # anchors per batch
    max_views: int = setting(100, minimum=1)  # anchors per image and class
    sampling: str = setting("hard", choices=tuple(SAMPLERS))  # hard (released) | random
    use_memory: bool = False  # contrast against the pixel / segment queues (the MEM variant)
    memory_size: int = setting(5000, minimum=1)  # entries per class and queue
    pixels_per_image: int = setting(10, minimum=0)  # pixels enqueued per image and class
    memory_temperature: float = setting(0.07, greater_than=0.0)  # tau = base tau against the memory


def contrast_forward(network, images: torch.Tensor, target: torch.Tensor, projection_input: str) -> dict:
    """The segmentor's training forward, the contrast embeddings taken from ``projection_input``."""
    if projection_input == "decoder":
        return network(images, target)
    stacked = network.decoder.concat(network.backbone(images))
    return network.head(network.decoder.fuse(stacked), target, projection_features=stacked)


def projection_channels(decoder, projection_input: str) -> int:
    """Input channels of the contrast projection for ``projection_input``."""
    return decoder.out_channels if projection_input == "decoder" else decoder.concat_channels


def contrast_loss(
    section: ContrastConfig, seed: int, ce_weight: float = 1.0, class_weights: list[float] | None = None
) -> ContrastSegLoss:
    """The CE + pixel-contrast criterion of the ``model.contrast`` section."""
    return ContrastSegLoss(
        class_weights=class_weights,
        contrast_weight=section.weight,
        start_iter=section.start_iter,
        ce_weight=ce_weight,
        temperature=section.temperature,
        base_temperature=section.base_temperature,
        max_samples=section.max_samples,
        max_views=section.max_views,
        seed=seed,
        memory_temperature=section.memory_temperature,
        sampling=section.sampling,
    )


def pixel_memory(section: ContrastConfig, num_classes: int) -> PixelQueue | None:
    """The pixel / segment queues of the ``model.contrast`` section, or None without ``use_memory``."""
    if not section.use_memory:
        return None
    return PixelQueue(num_classes, section.proj_dim, section.memory_size, section.pixels_per_image)


class PixelMemoryWriter:
    """Holds a step's embeddings and labels until :meth:`write` enqueues them (after the step)."""

    def __init__(self) -> None:
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def hold(self, outputs: Mapping[str, Any], target: torch.Tensor) -> None:
        embeddings = outputs.get("embeddings")
        self.pending = None if embeddings is None else (embeddings.detach(), target)

    def write(self, memory: PixelQueue | None, generator: SeededGenerator) -> None:
        if self.pending is not None and memory is not None:
            embeddings, target = self.pending
            memory.enqueue(embeddings, target, generator(embeddings.device))
        self.pending = None


class ContrastMethod(SegmentationMethod):
    """A segmentor with a :class:`ContrastHead`; ``loss = CE + weight * pixel contrast`` from
    ``start_iter`` on. With ``use_memory`` the anchors are contrasted with a :class:`PixelQueue`
    (``self.memory``), which every training step fills after the optimiser step (warm-up included,
    so the memory is full when the contrast starts)."""

    name: ClassVar[str] = "contrast"
    section: ClassVar[tuple[str, type]] = ("contrast", ContrastConfig)
    reads: ClassVar[tuple[str, ...]] = ("contrast",)
    find_unused_parameters: ClassVar[bool] = True  # the projection gets no gradient before start_iter

    def __init__(
        self,
        network,
        criterion: ContrastSegLoss,
        memory: PixelQueue | None = None,
        projection_input: str = "decoder",
    ) -> None:
        super().__init__()
        if projection_input not in PROJECTION_INPUTS:
            raise ValueError(f"projection_input must be one of {PROJECTION_INPUTS}, got '{projection_input}'")
        self.network = network
        self.criterion = criterion
        self.memory = memory
        self.projection_input = projection_input
        self._writer = PixelMemoryWriter()

    @classmethod
    def from_config(cls, model: Any, dataset: DatasetInfo, seed: int = 0) -> ContrastMethod:
        section = model.contrast
        classes = cls.output_classes(dataset)
        network = build_segmentor(
            model,
            classes,
            lambda decoder: ContrastHead(
                decoder.out_channels,
                classes,
                section.proj_dim,
                section.classifier_dropout,
                projection_channels=projection_channels(decoder, section.projection_input),
            ),
        )
        criterion = contrast_loss(section, seed, class_weights=ce_class_weights(model, classes))
        return cls(network, criterion, pixel_memory(section, classes), section.projection_input)

    def forward(self, batch: Mapping[str, torch.Tensor], iteration: int = 0) -> dict[str, torch.Tensor]:
        outputs = contrast_forward(self.network, batch["image"], batch["mask"], self.projection_input)
        self._writer.hold(outputs, batch["mask"])
        return self.criterion(outputs, batch["mask"], iteration, self.memory)

    def after_step(self, iteration: int) -> None:
        self._writer.write(self.memory, self.criterion.generator)
