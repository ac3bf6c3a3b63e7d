"""PPC for WSSS (Du et al., CVPR 2022): pixel-to-prototype contrast between two views, plugged into a
base CAM method (``model.ppc.base``: ``cam``, ``seam`` or ``eps``; docs/methods.md sections 3 and 3b)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..fields import setting
from ..losses.ppc import MINING_MODES, PixelToPrototypeContrast
from .base import DatasetInfo, WeaklySupervisedMethod
from .cam import CAMMethod
from .eps import EPSMethod
from .seam import SEAMMethod
from .wsss_base import WSSSBase

BASES: dict[str, type[WSSSBase]] = {"cam": CAMMethod, "seam": SEAMMethod, "eps": EPSMethod}
"""The bases PPC can be plugged into, by ``model.ppc.base``."""


@dataclass
class PPCConfig:
    """``model.ppc``: the base, the views, pseudo labels, prototypes and contrast terms (docs/methods.md
    section 3)."""

    proj_dim: int = setting(128, minimum=1)  # channels of the projected features
    temperature: float = setting(0.1, greater_than=0.0)  # tau of the pixel-to-prototype softmax
    top_k: int = setting(32, minimum=1)  # pixels per prototype, over the whole batch
    bg_threshold: float = setting(0.2, minimum=0.0, maximum=1.0)  # background score of the pseudo labels
    cross_weight: float = setting(0.1, minimum=0.0)  # on L_cp + L_cc
    intra_weight: float = setting(0.1, minimum=0.0)  # on L_intra
    mining: str = setting("paper", choices=MINING_MODES)  # released: the release's rank window
    scale_factor: float = setting(0.3, greater_than=0.0, maximum=1.0)  # target view / source view size
    target_size: int | None = setting(None, minimum=1)  # fixed target view side (128 in the release)
    base: str = setting("cam", choices=tuple(BASES))  # the base method PPC is plugged into
    # top_k = (h * w of the target view's feature map) // top_k_divisor: the release's h w / 8 (SEAM-based)
    # and h w / 16 (EPS-based); None: the fixed top_k
    top_k_divisor: int | None = setting(None, minimum=1)


class PPCMethod(WeaklySupervisedMethod):
    """A base's two-view training regularised by pixel-to-prototype contrast (PPC, Sec. 3.4).

    The source view S is the batch; the target view T is S resized bilinearly (align_corners=False) by
    ``scale_factor`` (or to ``target_size`` when given; the release resizes 448 -> 128). Both views go
    through the base's network; the base's prototype CAM (SEAM: PCM-refined) and the projected features of
    the source are resized bilinearly (align_corners=False; the release uses True) to the target's feature
    size so that pixels correspond.

    ``loss = base.pair_losses(S, T) + contrast``, where ``contrast`` is ``cross_weight * (cp + cc) +
    intra_weight * intra`` from :class:`PixelToPrototypeContrast`; with the ``cam`` base the base's term is
    ``(cls(S) + cls(T)) / 2``, as in the release.

    Args:
        network: the base's network (with a projector).
        contrast: the contrast module (its weights, mining mode and generator).
        scale_factor: target/source size ratio (0.3 ~ the release's 128/448).
        target_size: fixed target image side (overrides ``scale_factor``; 128 reproduces the release).
        base: the base method around ``network`` (default: the plain CAM base).
        top_k_divisor: when set, ``top_k = max(1, h w // top_k_divisor)`` for a target feature map of
            ``h x w`` (the release's scaling), instead of the contrast's fixed ``top_k``.

    The base is held unregistered: its network is registered here as ``network`` (the checkpoint keys of
    every base are ``network.*``), its recipe (frozen layers, parameter groups, CAM normalisation) applies.
    """

    name: ClassVar[str] = "ppc"
    section: ClassVar[tuple[str, type]] = ("ppc", PPCConfig)
    reads: ClassVar[tuple[str, ...]] = ("ppc", *BASES)

    def __init__(
        self,
        network: torch.nn.Module,
        contrast: PixelToPrototypeContrast,
        scale_factor: float = 0.3,
        target_size: int | None = None,
        base: WSSSBase | None = None,
        top_k_divisor: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 < scale_factor <= 1:
            raise ValueError(f"PPC scale_factor must be in (0, 1], got {scale_factor}")
        if target_size is not None and target_size < 1:
            raise ValueError(f"PPC target_size must be >= 1, got {target_size}")
        if top_k_divisor is not None and top_k_divisor < 1:
            raise ValueError(f"PPC top_k_divisor must be >= 1, got {top_k_divisor}")
        if getattr(network, "projector", None) is None:
            raise ValueError("PPC needs a CAM network with a projector (CAMNet(..., proj_dim=128))")
        if base is None:
            base = CAMMethod(network)
        elif base.network is not network:
            raise ValueError("PPC: the base must be built around the same network")
        self.network = network
        self.__dict__["base"] = base  # unregistered: its only state is the network registered above
        self.contrast = contrast
        self.scale_factor = scale_factor
        self.target_size = target_size
        self.top_k_divisor = top_k_divisor
        self.num_classes = network.num_classes
        self.inputs = base.inputs
        self.cam_normalisation = base.cam_normalisation

    base: WSSSBase

    @classmethod
    def batch_inputs(cls, model: Any) -> tuple[str, ...]:
        return BASES[model.ppc.base].inputs

    @classmethod
    def from_config(cls, model: Any, dataset: DatasetInfo, seed: int = 0) -> PPCMethod:
        section = model.ppc
        base = BASES[section.base].build(model, dataset, seed, proj_dim=section.proj_dim)
        contrast = PixelToPrototypeContrast(
            temperature=section.temperature,
            top_k=section.top_k,
            bg_threshold=section.bg_threshold,
            cross_weight=section.cross_weight,
            intra_weight=section.intra_weight,
            mining=section.mining,
        )
        return cls(
            base.network, contrast, section.scale_factor, section.target_size, base, section.top_k_divisor
        )

    def target_view(self, images: torch.Tensor) -> torch.Tensor:
        """The target view ``(B, 3, H', W')`` of the source ``images`` ``(B, 3, H, W)``."""
        if self.target_size is not None:
            size = (self.target_size, self.target_size)
        else:
            size = tuple(max(1, round(side * self.scale_factor)) for side in images.shape[-2:])
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)

    def forward(self, batch: Mapping[str, torch.Tensor], iteration: int = 0) -> dict[str, torch.Tensor]:
        images, tags = batch["image"], batch["tags"]
        source = self.base.view(images)
        target_images = self.target_view(images)
        target = self.base.view(target_images)
        base_terms = self.base.pair_losses(batch, source, target, target_images)
        size = target.cam.shape[-2:]
        cam_source = F.interpolate(source.prototype_cam, size=size, mode="bilinear", align_corners=False)
        features_source = F.interpolate(source.features, size=size, mode="bilinear", align_corners=False)
        top_k = None if self.top_k_divisor is None else max(1, size[0] * size[1] // self.top_k_divisor)
        terms = self.contrast(
            cam_source, features_source, target.prototype_cam, target.features, tags, top_k=top_k
        )
        return {
            **base_terms,
            "loss": base_terms["loss"] + terms["loss"],
            "cp": terms["cp"],
            "cc": terms["cc"],
            "intra": terms["intra"],
        }

    def train(self, mode: bool = True) -> PPCMethod:
        super().train(mode)
        self.base.apply_frozen_modes()
        return self

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict] | None:
        """The base's parameter groups (the contrast has no parameters)."""
        return self.base.parameter_groups(lr, weight_decay)
