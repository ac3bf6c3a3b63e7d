"""RCA (Zhou et al., CVPR 2022): region memory, region-mixup contrast and semantic aggregation for WSSS,
plugged into a base CAM method (``model.rca.base``: ``cam``, ``oaa`` or ``eps``; docs/methods.md
section 4)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..fields import setting
from ..losses.region_contrast import REDUCTIONS, RegionContrastLoss
from ..models.aggregation import AGGREGATION_MODES, ATTENTION_SIMILARITIES
from ..models.rca import HEAD_MODES, QUERY_PROJECTIONS, REGION_MASK_MODES, RCANetwork
from ..ops.kmeans import kmeans
from ..ops.pooling import masked_average_pool
from ..prototypes.region_memory import RegionMemory
from .base import DatasetInfo, RunInfo, WeaklySupervisedMethod, build_backbone_from_config
from .cam import CAMMethod
from .eps import EPSMethod
from .oaa import OAAMethod
from .wsss_base import BaseView, WSSSBase

BASES: dict[str, type[WSSSBase]] = {"cam": CAMMethod, "oaa": OAAMethod, "eps": EPSMethod}
"""The bases RCA can be plugged into, by ``model.rca.base``."""
BACKGROUND_BASES = ("eps",)
"""Bases whose CAMs have a background channel (RCA's heads then give one too)."""


@dataclass
class RCAConfig:
    """``model.rca``: base, network, region memory, contrast and k-means refresh (docs/methods.md
    section 4). Every option defaults to protoseg's RCA before issue 17; ``released`` values are the
    release's (github maeve07/RCA)."""

    num_prototypes: int = setting(10, minimum=1)  # k-means centroids per class (aggregation prototypes)
    aggregation: str = setting("paper", choices=AGGREGATION_MODES)  # released: learnable Q/K/V, no softmax
    attention_scale: float = setting(1.0, greater_than=0.0)  # scale of the similarities inside the softmax
    region_mask: str = setting("paper", choices=REGION_MASK_MODES)  # released: test on softmax_l(P)
    memory_size: int = setting(500, minimum=1)  # region slots per class
    momentum: float = setting(0.99, minimum=0.0, less_than=1.0)  # slot update m <- g m + (1 - g) f
    score_threshold: float = setting(0.7, minimum=0.0, maximum=1.0)  # class score needed to enter memory
    contrast_weight: float = setting(0.01, minimum=0.0)  # on L_RM-NCE
    aux_weight: float = setting(0.4, minimum=0.0)  # on the first head's classification loss
    contrast_start_iter: int = setting(0, minimum=0)  # the release: from epoch 2
    temperature: float = setting(0.07, greater_than=0.0)
    mixup_alpha: float = setting(8.0, minimum=0.0)  # w ~ Beta(alpha, alpha); 0: no mixup
    kmeans_iters: int = setting(10, minimum=0)
    refresh_interval: int = setting(0, minimum=0)  # iterations between k-means refreshes; 0: once per epoch
    base: str = setting("cam", choices=tuple(BASES))  # the base method RCA is plugged into
    attention: str = setting("dot", choices=ATTENTION_SIMILARITIES)  # paper mode: F Q^T or cos(F, Q)
    head: str = setting("linear", choices=HEAD_MODES)  # released: 3x (3x3 conv + ReLU) + 1x1, per class in O
    query_projection: str = setting("none", choices=QUERY_PROJECTIONS)  # released: contrast pools extra_F(F)
    contrast_reduction: str = setting("mean", choices=REDUCTIONS)  # released: per-image means, summed


class RCAMethod(WeaklySupervisedMethod):
    """RCA training objective around an :class:`RCANetwork`, on a base.

    ``L = base(O) + aux_weight * base(P) + contrast_weight * L_RM-NCE``, where ``base(X)`` are the base's
    losses on the CAM ``X`` (``cam`` and ``oaa``: the multilabel soft margin loss of GAP(X); ``eps``: that
    plus the saliency loss, with a background channel in both heads) and ``L_RM-NCE`` counts from
    ``iteration >= contrast_start_iter`` (the release: from epoch 2; set it to ``2 * iterations_per_epoch``
    to match). The final head O is what CAM inference uses and what the ``oaa`` base accumulates.

    After each training step (:meth:`after_step`), the regions of present classes with a non-empty
    mask whose score ``sigmoid(GAP(O))_l`` exceeds ``score_threshold`` are written to the memory
    (all ranks alike), and the base does its own after-step work (OAA stages its maps).

    :meth:`refresh` clusters every class's memory into the network's ``num_prototypes`` centroids with
    ONE batched k-means call and installs them as the aggregation prototypes; the trainer calls it every
    ``refresh_interval`` iterations (the release: once per epoch). A base with its own refresh (OAA's map
    writes, every iteration) is refreshed at each call, the k-means then running at its own interval.
    Before the first k-means, and for classes whose memory is empty, the prototypes are invalid and the
    aggregation context is zero, so O sees ``concat(F, 0)`` (paper mode). Under DDP the memory is
    identical on every rank, and DDP broadcasts rank 0's prototypes with the other buffers at the next
    forward.

    ``generator`` (optional, on the method's device) seeds the mixup draws; the global RNG otherwise.
    ``base`` (default: the plain CAM base around ``network``) is held unregistered, as PPC holds its base.

    Differences from the authors' release (docs/methods.md section 4): the memory regions are pooled from
    the backbone features F (the release's raw VGG features); the contrast's queries from F too, unless
    ``query_projection="released"`` (the release's ``extra_F``); empty region masks are skipped instead of
    dividing by zero; the memory starts empty instead of random, and the mixup partner always has another
    class; the contrast is a mean over regions unless ``contrast_reduction="released"``.
    """

    name: ClassVar[str] = "rca"
    section: ClassVar[tuple[str, type]] = ("rca", RCAConfig)
    reads: ClassVar[tuple[str, ...]] = ("rca", *BASES)
    find_unused_parameters: ClassVar[bool] = True  # no contrast before contrast_start_iter

    def __init__(
        self,
        network: RCANetwork,
        memory_size: int = 500,
        momentum: float = 0.99,
        score_threshold: float = 0.7,
        contrast_weight: float = 0.01,
        aux_weight: float = 0.4,
        contrast_start_iter: int = 0,
        kmeans_iters: int = 10,
        temperature: float = 0.07,
        mixup_alpha: float = 8.0,
        refresh_every: int = 0,
        generator: torch.Generator | None = None,
        base: WSSSBase | None = None,
        contrast_reduction: str = "mean",
    ) -> None:
        super().__init__()
        if memory_size < network.aggregation.num_prototypes:
            raise ValueError(
                f"RCAMethod: memory_size={memory_size} must be >= num_prototypes="
                f"{network.aggregation.num_prototypes} (k-means over each class's memory)"
            )
        if kmeans_iters < 0:
            raise ValueError(f"RCAMethod: kmeans_iters must be >= 0, got {kmeans_iters}")
        if refresh_every < 0:
            raise ValueError(f"RCAMethod: refresh_every must be >= 0, got {refresh_every}")
        if base is None:
            base = CAMMethod(network)
        elif base.network is not network:
            raise ValueError("RCAMethod: the base must be built around the same network")
        self.network = network
        self.__dict__["base"] = base  # unregistered: its only state is the network registered above
        self.num_classes = network.num_classes
        self.inputs = base.inputs
        self.cam_normalisation = base.cam_normalisation
        self.memory = RegionMemory(network.num_classes, network.feature_dim, memory_size, momentum)
        self.contrast = RegionContrastLoss(temperature, mixup_alpha, contrast_reduction)
        self.score_threshold = score_threshold
        self.contrast_weight = contrast_weight
        self.aux_weight = aux_weight
        self.contrast_start_iter = contrast_start_iter
        self.kmeans_iters = kmeans_iters
        self.refresh_every = refresh_every
        self.generator = generator
        self.kmeans_interval = refresh_every or 1  # refresh_every, or the run's epoch (attach_run)
        self._pending: tuple[torch.Tensor, ...] | None = None
        self._steps: int | None = None

    base: WSSSBase

    @classmethod
    def batch_inputs(cls, model: Any) -> tuple[str, ...]:
        return BASES[model.rca.base].inputs

    @classmethod
    def from_config(cls, model: Any, dataset: DatasetInfo, seed: int = 0) -> RCAMethod:
        section = model.rca
        base_class = BASES[section.base]
        base_section = getattr(model, section.base)
        background = section.base in BACKGROUND_BASES
        network = RCANetwork(
            build_backbone_from_config(model),
            cls.output_classes(dataset),
            num_prototypes=section.num_prototypes,
            aggregation=section.aggregation,
            attention_scale=section.attention_scale,
            region_mask=section.region_mask,
            attention=section.attention,
            head=section.head,
            query_projection=section.query_projection,
            background=background,
            cam_activation="softmax" if background else "none",
            dropout=base_section.dropout,
        )
        return cls(
            network,
            memory_size=section.memory_size,
            momentum=section.momentum,
            score_threshold=section.score_threshold,
            contrast_weight=section.contrast_weight,
            aux_weight=section.aux_weight,
            contrast_start_iter=section.contrast_start_iter,
            kmeans_iters=section.kmeans_iters,
            temperature=section.temperature,
            mixup_alpha=section.mixup_alpha,
            refresh_every=section.refresh_interval,
            base=base_class.wrap(network, model),
            contrast_reduction=section.contrast_reduction,
        )

    def region_embeddings(
        self, features: torch.Tensor, aux_cams: torch.Tensor, tags: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool one embedding per (image, class): ``(B, C, D)`` and a ``(B, C)`` bool validity mask.

        Valid = the class is tagged and its mask ``M_l`` is not empty. Embeddings keep the gradient
        to F (the masks are detached).
        """
        masks = self.network.region_masks(aux_cams)
        embeddings = masked_average_pool(features, masks)
        valid = (tags > 0.5) & (masks.sum(dim=(2, 3)) > 0)
        return embeddings, valid

    def forward(self, batch: Mapping[str, torch.Tensor], iteration: int = 0) -> dict[str, torch.Tensor]:
        """``batch["image"]`` (B, 3, H, W), ``batch["tags"]`` (B, C) multi-hot (and the base's inputs) ->
        loss and detached terms."""
        images, tags = batch["image"], batch["tags"]
        if tags.dim() != 2 or tags.shape != (images.shape[0], self.num_classes):
            raise ValueError(
                f"RCAMethod: tags must be ({images.shape[0]}, {self.num_classes}), got {tuple(tags.shape)}"
            )
        outputs = self.network(images)
        final = self.base.single_view_losses(batch, BaseView(outputs["cams"], outputs["cams"], None, outputs))
        first = self.base.single_view_losses(
            batch, BaseView(outputs["aux_cams"], outputs["aux_cams"], None, outputs)
        )
        loss = final["loss"] + self.aux_weight * first["loss"]
        terms = {key: value for key, value in final.items() if key != "loss"}
        terms.update({f"{key}_aux": value for key, value in first.items() if key != "loss"})

        embeddings, valid = self.region_embeddings(outputs["features"], outputs["aux_cams"], tags)
        batch_size, classes, dim = embeddings.shape
        embeddings = embeddings.reshape(batch_size * classes, dim)
        valid = valid.reshape(-1)
        labels = torch.arange(classes, device=images.device).repeat(batch_size)
        zero = loss.new_zeros(())
        contrast_terms = {"loss": zero, "contrast": zero, "mixup": zero}
        if self.contrast_weight > 0 and iteration >= self.contrast_start_iter:
            queries = embeddings
            if "queries" in outputs:  # the release's extra_F(F), masked like F
                masks = self.network.region_masks(outputs["aux_cams"])
                queries = masked_average_pool(outputs["queries"], masks).reshape(batch_size * classes, dim)
            owners = torch.arange(batch_size, device=images.device).repeat_interleave(classes)
            contrast_terms = self.contrast(
                queries, labels, valid, self.memory, generator=self.generator, images=owners
            )
            loss = loss + self.contrast_weight * contrast_terms["loss"]
        scores = self.network.scores(outputs["cams"]).detach().reshape(-1)
        self._pending = (embeddings.detach(), labels, scores, valid)
        self.base.track(batch, self.network.activate(outputs["cams"]))
        return {
            "loss": loss,
            **terms,
            "contrast": contrast_terms["contrast"].detach(),
            "mixup": contrast_terms["mixup"].detach(),
            "memory_fill": self.memory.count.float().mean().detach() / self.memory.size,
        }

    def after_step(self, iteration: int) -> None:
        """Write the step's confident regions into the memory; the base's after-step work."""
        if self._pending is not None:
            embeddings, labels, scores, valid = self._pending
            self.memory.enqueue(embeddings, labels, scores, self.score_threshold, valid=valid)
            self._pending = None
        self.base.after_step(iteration)
        self._steps = iteration + 1

    def refresh_interval(self, iterations_per_epoch: int) -> int:
        """``refresh_interval`` of the config, or once per epoch when it is 0; with a base that refreshes
        too (OAA: every iteration) the greatest common divisor of both."""
        kmeans_interval = self.refresh_every or max(1, iterations_per_epoch)
        base_interval = self.base.refresh_interval(iterations_per_epoch)
        return math.gcd(kmeans_interval, base_interval) if base_interval else kmeans_interval

    def attach_run(self, run: RunInfo) -> None:
        self.kmeans_interval = self.refresh_every or max(1, run.iterations_per_epoch)
        self.base.attach_run(run)

    @torch.no_grad()
    def refresh(self, generator: torch.Generator | None = None) -> None:
        """Re-cluster every class's memory (one batched k-means) into the aggregation prototypes; with a
        base that refreshes (OAA), its refresh first and the k-means only every ``kmeans_interval`` steps
        (always when called before any step).

        Only filled slots take part; classes with an empty memory get invalid prototypes (no part in
        the aggregation). ``generator`` (on the memory's device) seeds k-means++.
        """
        if self.base.refresh_interval(self.kmeans_interval):
            self.base.refresh()
            if self._steps is not None and self._steps % self.kmeans_interval:
                return
        aggregation = self.network.aggregation
        centroids = kmeans(
            self.memory.memory,
            aggregation.num_prototypes,
            iters=self.kmeans_iters,
            generator=generator,
            valid=self.memory.valid,
        )
        aggregation.set_prototypes(centroids, valid=self.memory.count > 0)

    def train(self, mode: bool = True) -> RCAMethod:
        super().train(mode)
        self.base.apply_frozen_modes()
        return self

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict] | None:
        """The base recipe's parameter groups over the RCA network (``lr_groups: released``: the heads and
        the query projection at 10x / 20x, the backbone and the aggregation at 1x / 2x, as released)."""
        return self.base.parameter_groups(lr, weight_decay)
