"""What every method is: a network to predict with, the losses of its training step, the state it
updates after the step, and how it is validated.

A method is an ``nn.Module`` (so DDP wraps it and its state dict is the checkpoint) with:

- ``network``: the module inference runs (a :class:`~protoseg.models.Segmentor` or a CAM network);
  prototypes and other state needed at inference live there;
- ``forward(batch, iteration) -> dict[str, Tensor]``: the training step's losses: ``"loss"`` (a scalar
  with a gradient path) and one detached scalar per term for logging; ``batch`` holds at least the
  keys of :attr:`Method.inputs`, on the method's device;
- ``after_step(iteration)``: state updates once the gradients are computed (prototype momentum
  updates, memory writes); the trainer calls it after the optimiser step, on every rank;
- ``refresh_interval(iterations_per_epoch)`` / ``refresh()``: periodic work (RCA's k-means, OAA's writes of
  its accumulated maps);
- ``attach_run(run)``: the run folder, schedule and rank, before the first step (state kept outside the
  checkpoint: OAA's accumulated maps in ``RUN/oaa/``);
- ``validation_labels(batch, settings) -> (B, H, W)``: predicted labels compared with ``batch["mask"]``
  by the validation metric (mIoU for segmentors, CAM-seed mIoU for weakly supervised methods);
- ``from_config(model, dataset, seed)``: construction from the ``model`` config section, reading every
  field of the sections listed in :attr:`Method.reads` (checked by ``tests/test_method_config.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..models.backbones import build_backbone
from ..models.decoder import ConcatFusionDecoder
from ..models.segmentor import Segmentor
from ..ops.cams import cam_seed_labels
from ..ops.inference import InferenceSettings, predict_probabilities

SEGMENTATION = "segmentation"
WEAKLY_SUPERVISED = "wsss"


@dataclass(frozen=True)
class DatasetInfo:
    """What a method needs to know about its dataset: ``num_classes`` of the masks (background
    included when ``has_background``: class 0 is background, as in VOC)."""

    num_classes: int
    has_background: bool

    @classmethod
    def of(cls, dataset: Any) -> DatasetInfo:
        """From a dataset object (``num_classes``, ``has_background``) or a checkpoint's ``dataset`` dict."""
        if isinstance(dataset, Mapping):
            return cls(int(dataset["num_classes"]), bool(dataset.get("has_background", False)))
        return cls(int(dataset.num_classes), bool(dataset.has_background))


@dataclass(frozen=True)
class ValidationSettings:
    """How validation predicts: test-time augmentation for segmentors, the background threshold of the
    CAM seeds for weakly supervised methods."""

    inference: InferenceSettings = InferenceSettings()
    cam_threshold: float = 0.2


@dataclass(frozen=True)
class RunInfo:
    """What a training run tells its method before the first step (:meth:`Method.attach_run`): the run
    ``folder``, ``iterations_per_epoch`` (all ranks together), the schedule's ``iterations``, this process's
    ``rank`` of ``world_size``, and the training images' names by dataset index."""

    folder: Path
    iterations_per_epoch: int
    iterations: int
    rank: int = 0
    world_size: int = 1
    sample_names: tuple[str, ...] = ()


class Method(nn.Module):
    """Base class of the methods (see the module docstring for the contract).

    Class attributes a method sets:

    - ``name``: its ``model.method`` value;
    - ``family``: ``"segmentation"`` (trained on masks) or ``"wsss"`` (trained on image tags);
    - ``section``: ``(name, dataclass)`` of the config section it owns, if any;
    - ``reads``: the config sections :meth:`from_config` reads (its own and others');
    - ``ignores``: fields of those sections that do not apply to it (setting one is a config error);
    - ``inputs``: the batch keys its training step reads;
    - ``find_unused_parameters``: whether some parameters get no gradient in some steps (DDP).
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    section: ClassVar[tuple[str, type] | None] = None
    reads: ClassVar[tuple[str, ...]] = ()
    ignores: ClassVar[dict[str, tuple[str, ...]]] = {}
    inputs: ClassVar[tuple[str, ...]] = ("image",)
    find_unused_parameters: ClassVar[bool] = False

    network: nn.Module

    @classmethod
    def from_config(cls, model: Any, dataset: DatasetInfo, seed: int = 0) -> Method:
        """Build the method from the ``model`` config section for ``dataset``; ``seed`` seeds the
        method's own random draws (anchor sampling, mixup, ...)."""
        raise NotImplementedError

    @classmethod
    def output_classes(cls, dataset: DatasetInfo) -> int:
        """Number of classes the network predicts for ``dataset``."""
        return dataset.num_classes

    @classmethod
    def batch_inputs(cls, model: Any) -> tuple[str, ...]:
        """The batch keys the method built from the ``model`` config trains on (``inputs``, unless
        they depend on the config: PPC on EPS also reads ``saliency``)."""
        return cls.inputs

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict] | None:
        """The optimiser's parameter groups (``{"params", "lr", "weight_decay"[, "momentum"]}``), or None
        for the trainer's default (every trainable parameter at ``lr``)."""
        return None

    def forward(self, batch: Mapping[str, torch.Tensor], iteration: int = 0) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self, iteration: int) -> None:
        """State updates after the optimiser step (nothing by default)."""

    def refresh_interval(self, iterations_per_epoch: int) -> int:
        """Iterations between calls of :meth:`refresh`; 0: never (the default)."""
        return 0

    def refresh(self, generator: torch.Generator | None = None) -> None:
        """Periodic work, every :meth:`refresh_interval` iterations (nothing by default); random draws
        from ``generator`` (the global RNG when None)."""

    def attach_run(self, run: RunInfo) -> None:
        """Called by the trainer on every rank before the first step of a run (also a resumed one): where
        per-run state that is no part of the checkpoint lives (OAA's accumulated maps). Nothing by
        default."""

    def validation_labels(
        self, batch: Mapping[str, torch.Tensor], settings: ValidationSettings
    ) -> torch.Tensor:
        """Predicted labels ``(B, H, W)`` of ``batch`` at the size of ``batch["mask"]``."""
        raise NotImplementedError


class SegmentationMethod(Method):
    """A fully supervised method: ``network`` is a :class:`Segmentor`, the batch carries ``mask``."""

    family: ClassVar[str] = SEGMENTATION
    inputs: ClassVar[tuple[str, ...]] = ("image", "mask")

    network: Segmentor

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, H, W)`` at the input size."""
        return self.network.predict(images)

    @torch.no_grad()
    def validation_labels(
        self, batch: Mapping[str, torch.Tensor], settings: ValidationSettings
    ) -> torch.Tensor:
        probabilities = predict_probabilities(
            self.network.predict, batch["image"], self.network.num_classes, settings.inference
        )
        return probabilities.argmax(1)


class WeaklySupervisedMethod(Method):
    """A method trained from image-level tags: its network gives class activation maps of the C
    foreground classes (the dataset's classes but the background, class 0)."""

    family: ClassVar[str] = WEAKLY_SUPERVISED
    inputs: ClassVar[tuple[str, ...]] = ("image", "tags")

    num_classes: int
    cam_normalisation: str = "max"
    """How CAM inference and the validation seeds normalise the CAMs (``ops.cams.CAM_NORMALISATIONS``)."""

    @classmethod
    def output_classes(cls, dataset: DatasetInfo) -> int:
        if not dataset.has_background:
            raise ValueError(
                f"model.method={cls.name} is weakly supervised and needs a dataset whose class 0 is "
                "background (its CAMs cover the foreground classes); this dataset has no background class"
            )
        return dataset.num_classes - 1

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """Raw foreground CAMs ``(B, C, h, w)`` (before ReLU and normalisation)."""
        return self.network.cams(images)

    @torch.no_grad()
    def validation_labels(
        self, batch: Mapping[str, torch.Tensor], settings: ValidationSettings
    ) -> torch.Tensor:
        size = batch["mask"].shape[-2:]
        cams = self.cams(batch["image"])
        return cam_seed_labels(cams, batch["tags"], size, settings.cam_threshold, self.cam_normalisation)


def ce_class_weights(model: Any, num_classes: int) -> list[float] | None:
    """``model.ce_class_weights``, checked to hold one weight per class."""
    weights = model.ce_class_weights
    if weights is not None and len(weights) != num_classes:
        raise ValueError(
            f"config key 'model.ce_class_weights' has {len(weights)} values; "
            f"the dataset has {num_classes} classes"
        )
    return weights


def build_backbone_from_config(model: Any) -> nn.Module:
    """The backbone of a ``model`` config section."""
    backbone = model.backbone
    return build_backbone(backbone.name, backbone.pretrained, backbone.output_stride, backbone.out_indices)


def build_segmentor(
    model: Any, num_classes: int, make_head: Callable[[ConcatFusionDecoder], nn.Module]
) -> Segmentor:
    """Backbone + concat-fusion decoder of the ``model`` section + ``make_head(decoder)`` (the head reads
    ``decoder.out_channels``, or ``decoder.concat_channels`` for the concatenated backbone levels)."""
    backbone = build_backbone_from_config(model)
    decoder = ConcatFusionDecoder(backbone.out_channels, model.decoder.channels, model.decoder.dropout)
    return Segmentor(backbone, decoder, make_head(decoder), num_classes)
