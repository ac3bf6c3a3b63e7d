"""ProtoSeg (Zhou et al., CVPR 2022): non-learnable class prototypes instead of a linear classifier."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..fields import setting
from ..losses.protoseg import ProtoSegLoss
from ..models.heads.protoseg import (
    PROJECTION_NORMS,
    PROJECTIONS,
    UPDATE_PIXELS,
    ProtoSegHead,
    PrototypeUpdate,
)
from ..prototypes.bank import ASSIGNMENTS, CLUSTERINGS, INITIALIZATIONS
from .base import DatasetInfo, SegmentationMethod, build_segmentor, ce_class_weights


@dataclass
class ProtoSegConfig:
    """``model.protoseg``: the head, its prototypes and its losses (docs/methods.md section 1)."""

    num_prototypes: int = setting(10, minimum=1)  # K per class
    proj_dim: int | None = setting(None, minimum=1)  # D; None: the decoder's channels (the paper's D = Cin)
    projection: str = setting("mlp", choices=PROJECTIONS)  # mlp (paper) | none (embed decoder features)
    # normalisation of the projected features (docs/methods.md): batch (trains from the first steps on every
    # backbone tried) | spatial_rms (ahead at long schedules; configs/shapes/protoseg.yaml) | released (the
    # release's L2 over the width axis) | batch_rms | instance | none
    projection_norm: str = setting("batch", choices=PROJECTION_NORMS)
    cls_head: bool = False  # the released 3x3 conv + BN + ReLU + Dropout2d(0.1) before the projection
    momentum: float = setting(0.999, minimum=0.0, maximum=1.0)  # gamma of the prototype update
    assignment: str = setting("argmax", choices=ASSIGNMENTS)  # gumbel: the released random update
    init: str = setting("random", choices=INITIALIZATIONS)  # random (paper) | data (first update = mean)
    # sinkhorn (paper: equipartitioned within-class clustering) | nearest (ablation: no column constraint)
    clustering: str = setting("sinkhorn", choices=CLUSTERINGS)
    # correct (release: only correctly predicted pixels move prototypes) | all (ablation: every labelled one)
    update_pixels: str = setting("correct", choices=UPDATE_PIXELS)
    sinkhorn_epsilon: float = setting(0.05, greater_than=0.0)
    sinkhorn_iters: int = setting(3, minimum=1)
    proto_contrast_weight: float = setting(0.01, minimum=0.0)  # the paper's PPC loss weight
    proto_distance_weight: float = setting(0.001, minimum=0.0)  # the paper's PPD loss weight
    temperature: float = setting(1.0, greater_than=0.0)  # of PPC; the release has none (1.0)


def protoseg_head_options(section: ProtoSegConfig) -> dict[str, Any]:
    """Keyword arguments of :class:`ProtoSegHead` from the ``model.protoseg`` section."""
    return {
        "num_prototypes": section.num_prototypes,
        "proj_dim": section.proj_dim,
        "projection": section.projection,
        "projection_norm": section.projection_norm,
        "cls_head": section.cls_head,
        "momentum": section.momentum,
        "assignment": section.assignment,
        "init": section.init,
        "clustering": section.clustering,
        "update_pixels": section.update_pixels,
        "sinkhorn_epsilon": section.sinkhorn_epsilon,
        "sinkhorn_iters": section.sinkhorn_iters,
    }


def protoseg_loss(section: ProtoSegConfig, class_weights: list[float] | None = None) -> ProtoSegLoss:
    """The CE + PPC + PPD criterion of the ``model.protoseg`` section."""
    return ProtoSegLoss(
        section.proto_contrast_weight,
        section.proto_distance_weight,
        section.temperature,
        class_weights=class_weights,
    )


class ProtoSegMethod(SegmentationMethod):
    """A segmentor with a :class:`ProtoSegHead`; ``loss = CE + w_ppc PPC + w_ppd PPD``. The prototypes'
    momentum update runs in :meth:`after_step`, from the clustering of the step's forward."""

    name: ClassVar[str] = "protoseg"
    section: ClassVar[tuple[str, type]] = ("protoseg", ProtoSegConfig)
    reads: ClassVar[tuple[str, ...]] = ("protoseg",)

    def __init__(self, network, criterion: ProtoSegLoss) -> None:
        super().__init__()
        self.network = network
        self.criterion = criterion
        self._pending: PrototypeUpdate | None = None

    @classmethod
    def from_config(cls, model: Any, dataset: DatasetInfo, seed: int = 0) -> ProtoSegMethod:
        classes = cls.output_classes(dataset)
        options = protoseg_head_options(model.protoseg)
        network = build_segmentor(
            model, classes, lambda decoder: ProtoSegHead(decoder.out_channels, classes, **options)
        )
        return cls(network, protoseg_loss(model.protoseg, ce_class_weights(model, classes)))

    def forward(self, batch: Mapping[str, torch.Tensor], iteration: int = 0) -> dict[str, torch.Tensor]:
        outputs = self.network(batch["image"], batch["mask"])
        self._pending = outputs.get("prototype_update")
        return self.criterion(outputs, batch["mask"], iteration)

    def after_step(self, iteration: int) -> None:
        if self._pending is not None:
            self.network.head.update_prototypes(self._pending)
            self._pending = None
