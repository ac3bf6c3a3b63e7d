"""WSSS bases: CAM networks trained from image tags that a plug-in (PPC; RCA later) can be put on.

A base (``cam``, ``seam``, ``eps``; one module each) is a method of its own (``model.method: seam``) and
also the part of a plug-in method that is not the plug-in (``model.method: ppc`` with
``model.ppc.base: seam``). docs/architecture.md ("WSSS bases") states the contract; in short a base has

- ``build(model, dataset, seed, proj_dim)``: the base with a network whose projector gives ``proj_dim``
  channels (None: no projector), from the ``model`` config (its own section, :class:`BaseRecipe` fields
  included); ``wrap(network, model)``: the base's losses, recipe and tracking around a network a plug-in
  built (RCA's, whose heads read aggregated features);
- ``view(images) -> BaseView``: the network's outputs for one view: the raw CAM ``(B, C+1, h, w)``
  (channel 0 = background), the CAM a plug-in takes pseudo labels and prototypes from (SEAM's
  PCM-refined one; the raw CAM otherwise) and the projected features;
- ``single_view_losses(batch, view)`` (training alone, one view) and
  ``pair_losses(batch, source, target, target_images)`` (a plug-in's two views: the source and the
  target view, the source images resized): ``"loss"`` and its detached terms;
- the release's recipe (:class:`BaseRecipe`): frozen BatchNorm and stem, learning-rate groups, dropout
  on the features, the optimiser quirk, Nesterov momentum, and how CAM inference normalises;
- ``track(batch, cams)``: what the base keeps of a step's foreground CAMs beyond its losses (OAA
  accumulates them per image; nothing for the others), applied in ``after_step`` / ``refresh`` and
  stored where ``attach_run`` says; a plug-in passes the CAM it infers from and forwards the three calls.

A plug-in holds its base *unregistered* (``base`` is not a submodule) and registers the base's network as
its own ``network``: every base and plug-in checkpoint keeps the ``network.*`` keys, and the base keeps
no state besides its network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..fields import setting
from ..models.backbones import stem_modules
from ..ops.cams import CAM_NORMALISATIONS
from .base import DatasetInfo, WeaklySupervisedMethod

LR_GROUP_MODES = ("uniform", "released")


@dataclass
class BaseRecipe:
    """The training recipe of a base (fields of ``model.cam`` / ``model.seam`` / ``model.eps``)."""

    freeze_bn: bool = False  # BatchNorm layers in eval mode, affine parameters not trained (the releases)
    freeze_stem: bool = False  # stem and first stage not trained (the releases' conv1a + b2)
    lr_groups: str = setting("uniform", choices=LR_GROUP_MODES)  # released: 1x / 2x / 10x / 20x groups
    dropout: float = setting(0.0, minimum=0.0, less_than=1.0)  # Dropout2d on the features (releases: 0.5)
    momentum_is_weight_decay: bool = False  # the releases' PolyOptimizer quirk: SGD momentum = weight decay
    nesterov: bool = False  # Nesterov momentum in every parameter group (the OAA and RCA releases' SGD)
    cam_normalisation: str = setting("max", choices=CAM_NORMALISATIONS)  # of CAM inference and the seeds


@dataclass
class BaseView:
    """One view of the images through a base's network.

    ``cam`` ``(B, C+1, h, w)`` raw CAM (channel 0 = background); ``prototype_cam`` the same shape, the CAM
    pseudo labels and prototypes come from; ``features`` ``(B, D, h, w)`` projected features (None without
    a projector); ``outputs`` everything the network returned.
    """

    cam: torch.Tensor
    prototype_cam: torch.Tensor
    features: torch.Tensor | None
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


def batchnorm_modules(module: nn.Module) -> list[nn.Module]:
    return [child for child in module.modules() if isinstance(child, nn.modules.batchnorm._BatchNorm)]


class WSSSBase(WeaklySupervisedMethod):
    """Base class of the WSSS bases (see the module docstring); subclasses set ``name``, ``section``,
    ``reads`` and implement :meth:`build` and the two loss methods."""

    def __init__(self, network: nn.Module, recipe: BaseRecipe | None = None) -> None:
        super().__init__()
        recipe = recipe if recipe is not None else BaseRecipe()
        self.network = network
        self.num_classes = network.num_classes
        self.recipe = recipe
        self.cam_normalisation = recipe.cam_normalisation
        self._frozen_bn = batchnorm_modules(network.backbone) if recipe.freeze_bn else []
        self._frozen_stem = stem_modules(network.backbone) if recipe.freeze_stem else []
        for module in self._frozen_bn + self._frozen_stem:
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: Any, dataset: DatasetInfo, seed: int = 0, proj_dim: int | None = None) -> WSSSBase:
        """The base from the ``model`` config, its network with a ``proj_dim`` projector (None: none)."""
        raise NotImplementedError

    @classmethod
    def wrap(cls, network: nn.Module, model: Any) -> WSSSBase:
        """The base around ``network`` (built by a plug-in: ``backbone``, ``num_classes``,
        ``classification_loss(cam, tags)``; EPS also ``cam_activation="softmax"``), from the base's section of
        the ``model`` config."""
        raise NotImplementedError(f"the {cls.name} base cannot be put around another network")

    @classmethod
    def from_config(cls, model: Any, dataset: DatasetInfo, seed: int = 0) -> WSSSBase:
        return cls.build(model, dataset, seed, proj_dim=None)

    # -- what a plug-in uses -----------------------------------------------------------------------
    def view(self, images: torch.Tensor) -> BaseView:
        """The network's outputs for ``images`` ``(B, 3, H, W)``."""
        outputs = self.network(images)
        return BaseView(
            outputs["cam"], outputs.get("refined", outputs["cam"]), outputs.get("features"), outputs
        )

    def single_view_losses(
        self, batch: Mapping[str, torch.Tensor], view: BaseView
    ) -> dict[str, torch.Tensor]:
        """The base's losses when it trains on one view of ``batch``."""
        raise NotImplementedError

    def pair_losses(
        self,
        batch: Mapping[str, torch.Tensor],
        source: BaseView,
        target: BaseView,
        target_images: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The base's losses over a source view (``batch["image"]``) and a target view (``target_images``,
        the source resized), as a two-view plug-in trains it."""
        raise NotImplementedError

    def track(self, batch: Mapping[str, torch.Tensor], cams: torch.Tensor) -> None:
        """Keep what the base needs of this step's foreground CAMs ``(B, C, h, w)`` beyond its losses, for
        :meth:`after_step` (nothing by default; OAA's attention maps)."""

    def forward(self, batch: Mapping[str, torch.Tensor], iteration: int = 0) -> dict[str, torch.Tensor]:
        return self.single_view_losses(batch, self.view(batch["image"]))

    # -- the recipe ---------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> WSSSBase:
        super().train(mode)
        self.apply_frozen_modes()
        return self

    def apply_frozen_modes(self) -> None:
        """Frozen BatchNorm layers and the frozen stem stay in eval mode (a plug-in calls this after its
        own ``train``)."""
        for module in self._frozen_bn + self._frozen_stem:
            module.eval()

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict] | None:
        """The optimiser's parameter groups, or None (one group at ``lr``: the trainer's default) with
        ``lr_groups: uniform`` and no quirk.

        ``lr_groups: released``: backbone weights at ``lr`` with ``weight_decay``, backbone biases (and
        other 1-d parameters) at ``2 lr`` without; the new layers' weights at ``10 lr`` with, their biases
        at ``20 lr`` without (a network with ``pretrained_lr_parameters()`` names what counts as the
        backbone: RCA's release keeps its aggregation layers at 1x / 2x). ``momentum_is_weight_decay``:
        every group's SGD momentum is ``weight_decay`` (the releases pass it where SGD expects the
        momentum); ``nesterov``: every group's SGD uses Nesterov momentum.
        """
        recipe = self.recipe
        if recipe.lr_groups == "uniform" and not recipe.momentum_is_weight_decay and not recipe.nesterov:
            return None
        trainable = [(name, p) for name, p in self.network.named_parameters() if p.requires_grad]
        if recipe.lr_groups == "uniform":
            groups = [{"params": [p for _, p in trainable], "lr": lr, "weight_decay": weight_decay}]
        else:
            pretrained = getattr(self.network, "pretrained_lr_parameters", self.network.backbone.parameters)
            backbone = {id(p) for p in pretrained()}
            buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {
                key: [] for key in ((True, True), (True, False), (False, True), (False, False))
            }
            for _, parameter in trainable:
                buckets[(id(parameter) in backbone, parameter.dim() > 1)].append(parameter)
            settings = {
                (True, True): (1.0, weight_decay),
                (True, False): (2.0, 0.0),
                (False, True): (10.0, weight_decay),
                (False, False): (20.0, 0.0),
            }
            groups = [
                {"params": params, "lr": lr * settings[key][0], "weight_decay": settings[key][1]}
                for key, params in buckets.items()
                if params
            ]
        for group in groups:
            if recipe.momentum_is_weight_decay:
                group["momentum"] = weight_decay
            if recipe.nesterov:
                group["nesterov"] = True
        return groups


def recipe_of(section: Any) -> BaseRecipe:
    """The :class:`BaseRecipe` fields of a base's config section."""
    return BaseRecipe(**{name: getattr(section, name) for name in BaseRecipe.__dataclass_fields__})
