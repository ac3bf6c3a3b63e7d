"""EPS (Lee et al., CVPR 2021): a CAM network with a background channel trained to reproduce an
off-the-shelf saliency map, with the classes the detector misses counted as background."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..fields import setting
from ..losses.eps import saliency_loss
from ..models.cam import CAMNet
from .base import DatasetInfo, build_backbone_from_config
from .wsss_base import LR_GROUP_MODES, BaseRecipe, BaseView, WSSSBase, recipe_of


@dataclass
class EPSConfig(BaseRecipe):
    """``model.eps``: the saliency loss; the recipe defaults are the release's (frozen BatchNorm and
    stem, 1x / 2x / 10x / 20x learning rates, no dropout, max-normalised softmax CAMs at inference),
    without its momentum quirk."""

    freeze_bn: bool = True
    freeze_stem: bool = True
    lr_groups: str = setting("released", choices=LR_GROUP_MODES)
    tau: float = setting(0.5, minimum=0.0, maximum=1.0)  # overlap ratio that makes a tagged class salient
    lam: float = setting(0.5, minimum=0.0, maximum=1.0)  # weight of the foreground map in the prediction
    saliency_weight: float = setting(1.0, minimum=0.0)  # on the saliency loss


class EPSMethod(WSSSBase):
    """``loss = cls + saliency_weight * sal`` (:func:`protoseg.losses.eps.saliency_loss`); on two views
    the mean of each term over the views, the target view's saliency map being the batch's resized
    bilinearly with the images.

    The network's CAM has C+1 channels (channel 0 = background) and CAM inference sums the softmax
    foreground probabilities (``cam_activation="softmax"``), as released. The batch carries ``saliency``
    ``(B, 1, H, W)`` in [0, 1] (``data.saliency_dir``).
    """

    name: ClassVar[str] = "eps"
    section: ClassVar[tuple[str, type]] = ("eps", EPSConfig)
    reads: ClassVar[tuple[str, ...]] = ("eps",)
    inputs: ClassVar[tuple[str, ...]] = ("image", "tags", "saliency")

    def __init__(
        self,
        network: torch.nn.Module,
        recipe: BaseRecipe | None = None,
        tau: float = 0.5,
        lam: float = 0.5,
        saliency_weight: float = 1.0,
    ) -> None:
        super().__init__(network, recipe)
        if getattr(network, "cam_activation", None) != "softmax":
            raise ValueError("EPS infers from softmax CAMs: build its network with cam_activation='softmax'")
        self.tau = tau
        self.lam = lam
        self.saliency_weight = saliency_weight

    @classmethod
    def build(cls, model: Any, dataset: DatasetInfo, seed: int = 0, proj_dim: int | None = None) -> EPSMethod:
        section = model.eps
        network = CAMNet(
            build_backbone_from_config(model),
            cls.output_classes(dataset),
            proj_dim,
            dropout=section.dropout,
            cam_activation="softmax",
        )
        return cls.wrap(network, model)

    @classmethod
    def wrap(cls, network: torch.nn.Module, model: Any) -> EPSMethod:
        section = model.eps
        return cls(network, recipe_of(section), section.tau, section.lam, section.saliency_weight)

    def _terms(self, cam: torch.Tensor, saliency: torch.Tensor, tags: torch.Tensor):
        classification = self.network.classification_loss(cam, tags)
        return classification, saliency_loss(cam, saliency, tags, self.tau, self.lam)["loss"]

    def _total(self, classification: torch.Tensor, saliency: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = classification + self.saliency_weight * saliency
        return {"loss": loss, "cls": classification.detach(), "sal": saliency.detach()}

    def single_view_losses(
        self, batch: Mapping[str, torch.Tensor], view: BaseView
    ) -> dict[str, torch.Tensor]:
        return self._total(*self._terms(view.cam, batch["saliency"], batch["tags"]))

    def pair_losses(
        self,
        batch: Mapping[str, torch.Tensor],
        source: BaseView,
        target: BaseView,
        target_images: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        saliency, tags = batch["saliency"], batch["tags"]
        target_saliency = F.interpolate(
            saliency.float(), size=target_images.shape[-2:], mode="bilinear", align_corners=False
        )
        cls_s, sal_s = self._terms(source.cam, saliency, tags)
        cls_t, sal_t = self._terms(target.cam, target_saliency, tags)
        return self._total(0.5 * (cls_s + cls_t), 0.5 * (sal_s + sal_t))
