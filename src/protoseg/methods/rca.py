"""RCA (Zhou et al., CVPR 2022): region memory, region-mixup contrast and semantic aggregation for WSSS."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..fields import setting
from ..losses.region_contrast import RegionContrastLoss
from ..models.aggregation import AGGREGATION_MODES
from ..models.rca import REGION_MASK_MODES, RCANetwork
from ..ops.kmeans import kmeans
from ..ops.pooling import masked_average_pool
from ..prototypes.region_memory import RegionMemory
from .base import DatasetInfo, WeaklySupervisedMethod, build_backbone_from_config


@dataclass
class RCAConfig:
    """``model.rca``: network, region memory, contrast and k-means refresh (docs/methods.md section 4)."""

    num_prototypes: int = setting(10, minimum=1)  # k-means centroids per class (aggregation prototypes)
    aggregation: str = setting("paper", choices=AGGREGATION_MODES)  # released: learnable Q/K/V, no softmax
    attention_scale: float = setting(1.0, greater_than=0.0)  # scale of F Q^T inside the softmax (paper: 1)
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


def _gap(cams: torch.Tensor) -> torch.Tensor:
    return cams.float().mean(dim=(2, 3))


class RCAMethod(WeaklySupervisedMethod):
    """RCA training objective around an :class:`RCANetwork`.

    ``L = contrast_weight * L_RM-NCE + aux_weight * MLSM(GAP(P), y) + MLSM(GAP(O), y)`` with MLSM the
    multilabel soft margin loss; ``L_RM-NCE`` counts from ``iteration >= contrast_start_iter`` (the
    release: from epoch 2; set it to ``2 * iterations_per_epoch`` to match).

    After each training step (:meth:`after_step`), the regions of present classes with a non-empty
    mask whose score ``sigmoid(GAP(O))_l`` exceeds ``score_threshold`` are written to the memory
    (all ranks alike).

    :meth:`refresh` clusters every class's memory into the network's ``num_prototypes`` centroids with
    ONE batched k-means call and installs them as the aggregation prototypes; the trainer calls it every
    ``refresh_interval`` iterations (the release: once per epoch). Before the first refresh, and for
    classes whose memory is empty, the prototypes are invalid and the aggregation context is zero, so
    O sees ``concat(F, 0)`` (paper mode). Under DDP the memory is identical on every rank, and DDP
    broadcasts rank 0's prototypes with the other buffers at the next forward.

    ``generator`` (optional, on the method's device) seeds the mixup draws; the global RNG otherwise.

    Differences from the authors' release (deliberate, docs/methods.md section 4): region embeddings
    are pooled from the backbone features F for BOTH the contrast and the memory (the release contrasts
    ``extra_F(x)`` against a memory of raw ``x``); empty region masks are skipped instead of dividing by
    zero; the memory starts empty instead of random, and the mixup partner always has another class;
    the contrast is a mean over regions (the release sums per-image means over the batch).
    """

    name: ClassVar[str] = "rca"
    section: ClassVar[tuple[str, type]] = ("rca", RCAConfig)
    reads: ClassVar[tuple[str, ...]] = ("rca",)
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
        self.network = network
        self.num_classes = network.num_classes
        self.memory = RegionMemory(network.num_classes, network.feature_dim, memory_size, momentum)
        self.contrast = RegionContrastLoss(temperature=temperature, mixup_alpha=mixup_alpha)
        self.score_threshold = score_threshold
        self.contrast_weight = contrast_weight
        self.aux_weight = aux_weight
        self.contrast_start_iter = contrast_start_iter
        self.kmeans_iters = kmeans_iters
        self.refresh_every = refresh_every
        self.generator = generator
        self._pending: tuple[torch.Tensor, ...] | None = None

    @classmethod
    def from_config(cls, model: Any, dataset: DatasetInfo, seed: int = 0) -> RCAMethod:
        section = model.rca
        network = RCANetwork(
            build_backbone_from_config(model),
            cls.output_classes(dataset),
            num_prototypes=section.num_prototypes,
            aggregation=section.aggregation,
            attention_scale=section.attention_scale,
            region_mask=section.region_mask,
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
        """``batch["image"]`` (B, 3, H, W), ``batch["tags"]`` (B, C) multi-hot -> loss and detached terms."""
        images, tags = batch["image"], batch["tags"]
        if tags.dim() != 2 or tags.shape != (images.shape[0], self.num_classes):
            raise ValueError(
                f"RCAMethod: tags must be ({images.shape[0]}, {self.num_classes}), got {tuple(tags.shape)}"
            )
        outputs = self.network(images)
        targets = tags.float()
        classification = F.multilabel_soft_margin_loss(_gap(outputs["cams"]), targets)
        auxiliary = F.multilabel_soft_margin_loss(_gap(outputs["aux_cams"]), targets)
        loss = classification + self.aux_weight * auxiliary

        embeddings, valid = self.region_embeddings(outputs["features"], outputs["aux_cams"], tags)
        batch_size, classes, dim = embeddings.shape
        embeddings = embeddings.reshape(batch_size * classes, dim)
        valid = valid.reshape(-1)
        labels = torch.arange(classes, device=images.device).repeat(batch_size)
        zero = loss.new_zeros(())
        contrast_terms = {"loss": zero, "contrast": zero, "mixup": zero}
        if self.contrast_weight > 0 and iteration >= self.contrast_start_iter:
            contrast_terms = self.contrast(embeddings, labels, valid, self.memory, generator=self.generator)
            loss = loss + self.contrast_weight * contrast_terms["loss"]
        scores = torch.sigmoid(_gap(outputs["cams"])).detach().reshape(-1)
        self._pending = (embeddings.detach(), labels, scores, valid)
        return {
            "loss": loss,
            "cls": classification.detach(),
            "cls_aux": auxiliary.detach(),
            "contrast": contrast_terms["contrast"].detach(),
            "mixup": contrast_terms["mixup"].detach(),
            "memory_fill": self.memory.count.float().mean().detach() / self.memory.size,
        }

    def after_step(self, iteration: int) -> None:
        """Write the step's confident regions into the memory."""
        if self._pending is not None:
            embeddings, labels, scores, valid = self._pending
            self.memory.enqueue(embeddings, labels, scores, self.score_threshold, valid=valid)
            self._pending = None

    def refresh_interval(self, iterations_per_epoch: int) -> int:
        """``refresh_interval`` of the config, or once per epoch when it is 0."""
        return self.refresh_every or max(1, iterations_per_epoch)

    @torch.no_grad()
    def refresh(self, generator: torch.Generator | None = None) -> None:
        """Re-cluster every class's memory (one batched k-means) into the aggregation prototypes.

        Only filled slots take part; classes with an empty memory get invalid prototypes (no part in
        the aggregation). ``generator`` (on the memory's device) seeds k-means++.
        """
        aggregation = self.network.aggregation
        centroids = kmeans(
            self.memory.memory,
            aggregation.num_prototypes,
            iters=self.kmeans_iters,
            generator=generator,
            valid=self.memory.valid,
        )
        aggregation.set_prototypes(centroids, valid=self.memory.count > 0)
