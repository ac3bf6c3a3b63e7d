"""RCA: Regional Semantic Contrast and Aggregation for WSSS (Zhou et al., CVPR 2022).

``RCANetwork`` is the CAM classifier (backbone -> first CAM head P, semantic aggregation -> final
CAM head O); ``RCAMethod`` adds the region memory, the region mixup contrast and the k-means
refresh of the aggregation prototypes, behind the WSSS method contract shared with the CAM
baseline and PPC (``forward(images, tags, iteration) -> {"loss", ...}``, ``cams(images)``,
``num_classes``).

Differences from the authors' release (all deliberate, see docs/methods.md section 4):

- one 1x1 conv (no bias) per CAM head over the C foreground classes (the release stacks three
  3x3 convs before each head, one stack per class in O); there is no background channel;
- region embeddings are pooled from the backbone features F for BOTH the contrast and the memory
  (the release contrasts ``extra_F(x)`` against a memory of raw ``x``);
- empty region masks are skipped instead of dividing by zero; the memory starts empty instead
  of random, and the mixup partner always has another class;
- the contrast is a mean over regions (the release sums per-image means over the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from protoseg.losses.region_contrast import RegionContrastLoss
from protoseg.models.aggregation import SemanticAggregation
from protoseg.ops.kmeans import kmeans
from protoseg.ops.pooling import masked_average_pool
from protoseg.prototypes.region_memory import RegionMemory

REGION_MASK_MODES = ("paper", "released")


class RCANetwork(nn.Module):
    """Backbone -> ``F`` (last level, D channels) -> P (first CAM head) and O (final CAM head).

    ``P = conv1x1(F)``, ``F_hat = SemanticAggregation(F)``, ``O = conv1x1(F_hat)``; both heads give
    the C foreground classes only (no background channel, as in the release); the background is
    decided by thresholding at CAM inference.

    ``region_mask="paper"``: ``M_l = 1(P_l > mean_xy P_l)`` (RCA pseudo-region representation);
    ``"released"``: the same test on ``softmax_l(P)`` (the release thresholds class-softmaxed maps).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_prototypes: int = 10,
        aggregation: str = "paper",
        attention_scale: float = 1.0,
        region_mask: str = "paper",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"RCANetwork: num_classes must be >= 1, got {num_classes}")
        if region_mask not in REGION_MASK_MODES:
            raise ValueError(
                f"RCANetwork: region_mask must be one of {REGION_MASK_MODES}, got '{region_mask}'"
            )
        channels = getattr(backbone, "out_channels", None)
        if not channels:
            raise ValueError("RCANetwork: the backbone must expose out_channels: list[int]")
        self.backbone = backbone
        self.num_classes = num_classes
        self.feature_dim = int(channels[-1])
        self.region_mask = region_mask
        self.aux_head = nn.Conv2d(self.feature_dim, num_classes, 1, bias=False)
        self.aggregation = SemanticAggregation(
            self.feature_dim, num_classes, num_prototypes, mode=aggregation, attention_scale=attention_scale
        )
        self.head = nn.Conv2d(self.aggregation.out_channels, num_classes, 1, bias=False)
        # as the CAM baseline's classifier (the release draws N(0, 0.01))
        nn.init.xavier_uniform_(self.aux_head.weight)
        nn.init.xavier_uniform_(self.head.weight)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images (B, 3, H, W)`` -> dict of ``features`` F ``(B, D, h, w)``, ``aux_cams`` P, ``cams`` O.

        P and O are ``(B, C, h, w)`` raw foreground CAMs at feature resolution.
        """
        features = self.backbone(images)[-1]
        aux_cams = self.aux_head(features)
        cams = self.head(self.aggregation(features))
        return {"features": features, "aux_cams": aux_cams, "cams": cams}

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """Raw foreground CAMs from the final head O, ``(B, C, h, w)`` at feature resolution."""
        return self.forward(images)["cams"]

    @torch.no_grad()
    def region_masks(self, aux_cams: torch.Tensor) -> torch.Tensor:
        """``aux_cams`` P ``(B, C, h, w)`` -> binary float masks ``M_l = 1(P_l > mean(P_l))``, detached."""
        maps = aux_cams.detach().float()
        if self.region_mask == "released":
            maps = maps.softmax(dim=1)
        return (maps > maps.mean(dim=(2, 3), keepdim=True)).float()


def _gap(cams: torch.Tensor) -> torch.Tensor:
    return cams.float().mean(dim=(2, 3))


class RCAMethod(nn.Module):
    """RCA training objective around an :class:`RCANetwork` (the WSSS method contract).

    ``L = contrast_weight * L_RM-NCE + aux_weight * MLSM(GAP(P), y) + MLSM(GAP(O), y)`` with MLSM the
    multilabel soft margin loss; ``L_RM-NCE`` counts from ``iteration >= contrast_start_iter`` (the
    release: from epoch 2; set it to ``2 * iterations_per_epoch`` to match).

    Each training step, after the loss, the regions of present classes with a non-empty mask whose
    score ``sigmoid(GAP(O))_l`` exceeds ``score_threshold`` are written to the memory (all ranks alike).

    ``refresh(generator=None)`` clusters every class's memory into ``num_prototypes`` centroids with
    ONE batched k-means call and installs them as the aggregation prototypes; the trainer calls it
    every ``refresh_interval`` iterations (the release: once per epoch). Before the first refresh,
    and for classes whose memory is empty, the prototypes are invalid and the aggregation context is
    zero, so O sees ``concat(F, 0)`` (paper mode). Under DDP the memory is identical on every rank;
    pass ``refresh`` a generator seeded alike on all ranks (or rely on DDP's buffer broadcast) so that
    the prototypes are too.

    ``generator`` (optional, on the method's device) seeds the mixup draws; the global RNG otherwise.
    ``num_prototypes`` / ``aggregation``: None takes the network's; another value raises ValueError.
    """

    def __init__(
        self,
        network: RCANetwork,
        memory_size: int = 500,
        momentum: float = 0.99,
        score_threshold: float = 0.7,
        contrast_weight: float = 0.01,
        aux_weight: float = 0.4,
        contrast_start_iter: int = 0,
        num_prototypes: int | None = None,
        kmeans_iters: int = 30,
        temperature: float = 0.07,
        mixup_alpha: float = 8.0,
        aggregation: str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(network, RCANetwork):
            raise ValueError(f"RCAMethod: network must be an RCANetwork, got {type(network).__name__}")
        if num_prototypes is not None and num_prototypes != network.aggregation.num_prototypes:
            raise ValueError(
                f"RCAMethod: num_prototypes={num_prototypes} differs from the network's "
                f"{network.aggregation.num_prototypes}"
            )
        if aggregation is not None and aggregation != network.aggregation.mode:
            raise ValueError(
                f"RCAMethod: aggregation='{aggregation}' differs from the network's "
                f"'{network.aggregation.mode}'"
            )
        if memory_size < network.aggregation.num_prototypes:
            raise ValueError(
                f"RCAMethod: memory_size={memory_size} must be >= num_prototypes="
                f"{network.aggregation.num_prototypes} (k-means over each class's memory)"
            )
        if kmeans_iters < 0:
            raise ValueError(f"RCAMethod: kmeans_iters must be >= 0, got {kmeans_iters}")
        self.network = network
        self.num_classes = network.num_classes
        self.memory = RegionMemory(network.num_classes, network.feature_dim, memory_size, momentum)
        self.contrast = RegionContrastLoss(temperature=temperature, mixup_alpha=mixup_alpha)
        self.score_threshold = score_threshold
        self.contrast_weight = contrast_weight
        self.aux_weight = aux_weight
        self.contrast_start_iter = contrast_start_iter
        self.kmeans_iters = kmeans_iters
        self.generator = generator

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

    def forward(
        self, images: torch.Tensor, tags: torch.Tensor, iteration: int = 0
    ) -> dict[str, torch.Tensor]:
        """``images (B, 3, H, W)``, ``tags (B, C)`` multi-hot -> ``loss`` and detached terms for logging."""
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
        batch, classes, dim = embeddings.shape
        embeddings = embeddings.reshape(batch * classes, dim)
        valid = valid.reshape(-1)
        labels = torch.arange(classes, device=images.device).repeat(batch)
        zero = loss.new_zeros(())
        contrast_terms = {"loss": zero, "contrast": zero, "mixup": zero}
        if self.contrast_weight > 0 and iteration >= self.contrast_start_iter:
            contrast_terms = self.contrast(embeddings, labels, valid, self.memory, generator=self.generator)
            loss = loss + self.contrast_weight * contrast_terms["loss"]
        if self.training:
            scores = torch.sigmoid(_gap(outputs["cams"])).detach().reshape(-1)
            self.memory.enqueue(embeddings, labels, scores, self.score_threshold, valid=valid)
        return {
            "loss": loss,
            "cls": classification.detach(),
            "cls_aux": auxiliary.detach(),
            "contrast": contrast_terms["contrast"].detach(),
            "mixup": contrast_terms["mixup"].detach(),
            "memory_fill": self.memory.count.float().mean().detach() / self.memory.size,
        }

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """Raw foreground CAMs of the final head O, ``(B, C, h, w)``."""
        return self.network.cams(images)

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


_NETWORK_OPTIONS = ("num_classes", "num_prototypes", "aggregation", "attention_scale", "region_mask")
_METHOD_OPTIONS = (
    "memory_size",
    "momentum",
    "score_threshold",
    "contrast_weight",
    "aux_weight",
    "contrast_start_iter",
    "kmeans_iters",
    "temperature",
    "mixup_alpha",
)


def build_rca_method(network: nn.Module, **options) -> RCAMethod:
    """Build an :class:`RCAMethod` from an :class:`RCANetwork`, or from a backbone plus network options.

    With a backbone (any module with ``out_channels``), ``num_classes`` is required and
    ``num_prototypes``, ``aggregation``, ``attention_scale``, ``region_mask`` configure the network;
    the other options are :class:`RCAMethod`'s. An unknown option raises ``ValueError``.
    """
    unknown = sorted(set(options) - set(_NETWORK_OPTIONS) - set(_METHOD_OPTIONS))
    if unknown:
        raise ValueError(
            f"build_rca_method: unknown option(s) {unknown}; "
            f"known: {sorted(_NETWORK_OPTIONS + _METHOD_OPTIONS)}"
        )
    network_options = {key: options[key] for key in _NETWORK_OPTIONS if key in options}
    method_options = {key: options[key] for key in _METHOD_OPTIONS if key in options}
    if not isinstance(network, RCANetwork):
        if "num_classes" not in network_options:
            raise ValueError("build_rca_method: num_classes is required to build the network from a backbone")
        network = RCANetwork(network, **network_options)
    else:
        for key in ("num_prototypes", "aggregation"):
            if key in network_options:
                method_options[key] = network_options.pop(key)
        requested_classes = network_options.pop("num_classes", network.num_classes)
        if requested_classes != network.num_classes:
            raise ValueError(
                f"build_rca_method: num_classes={requested_classes} differs from the network's "
                f"{network.num_classes}"
            )
        if network_options:
            raise ValueError(
                f"build_rca_method: options {sorted(network_options)} configure the network; "
                "pass a backbone instead of a built RCANetwork to use them"
            )
    return RCAMethod(network, **method_options)
