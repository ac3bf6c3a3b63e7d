"""ProtoSeg head: pixels classified by their nearest class prototype (Zhou et al., CVPR 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...prototypes.bank import PrototypeBank

__all__ = ["ProtoSegHead", "PROTO_IGNORE_INDEX", "PROJECTIONS"]

PROJECTIONS = ("mlp", "none")

PROTO_IGNORE_INDEX = -1
"""Value of ``"proto_targets"`` on ignored pixels. Not 255: with C * K > 255 (ADE20K, K = 10)
255 is a valid target ``c * K + k``."""


class ProtoSegHead(nn.Module):
    """Non-learnable prototypes instead of a linear classifier (ProtoSeg, CVPR 2022).

    ``forward(features (B, Cin, h, w), target (B, H, W) | None)`` returns

    - ``"logits"`` ``(B, C, h, w)``: ``mask_norm(max_k <x, p_{c,k}>)`` (nearest prototype), x the projected,
      LayerNorm-ed and L2-normalised (over channels) pixel embedding;
    - in training with a target, also ``"proto_logits"`` ``(N, C * K)`` (all pixel-prototype
      similarities, N = B * h * w, gradient flows to x) and ``"proto_targets"`` ``(N,)`` int64
      ``c * K + k`` for labelled pixels, ``PROTO_IGNORE_INDEX`` (-1) for ignored ones; and it
      clusters the pixels within their class and momentum-updates the prototypes (no gradient,
      identical on all DDP ranks). Sinkhorn and update run in float32; under autocast the
      similarities they start from are those of the forward (half precision, as released).

    Args:
        in_channels: Cin of the decoder features.
        num_classes: C.
        num_prototypes: K per class.
        proj_dim: D of the embedding (``None``: D = Cin, as in the paper).
        projection: ``"mlp"`` (the paper's ``proj``: 1x1 conv Cin -> Cin, ReLU, 1x1 conv Cin -> D) or
            ``"none"`` (the decoder features themselves are embedded, D = Cin: inference is then the
            linear head's cost plus the C * K - C extra similarity columns).
        momentum, assignment, sinkhorn_epsilon, sinkhorn_iters, generator, init: see
            :class:`~protoseg.prototypes.PrototypeBank`.
        ignore_index: label value of ignored pixels in ``target`` (any label outside
            ``[0, C)`` is ignored too).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_prototypes: int = 10,
        proj_dim: int | None = None,
        momentum: float = 0.999,
        assignment: str = "argmax",
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iters: int = 3,
        ignore_index: int = 255,
        generator: torch.Generator | None = None,
        init: str = "random",
        projection: str = "mlp",
    ) -> None:
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f"ProtoSegHead projection must be one of {PROJECTIONS}, got '{projection}'")
        if projection == "none" and proj_dim not in (None, in_channels):
            raise ValueError(
                f"ProtoSegHead projection 'none' embeds the {in_channels}-channel decoder features: "
                f"proj_dim must be None or {in_channels}, got {proj_dim}"
            )
        dim = proj_dim or in_channels
        self.num_classes = num_classes
        self.num_prototypes = num_prototypes
        self.ignore_index = ignore_index
        if projection == "mlp":
            self.proj: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 1), nn.ReLU(inplace=True), nn.Conv2d(in_channels, dim, 1)
            )
        else:
            self.proj = nn.Identity()
        self.feat_norm = nn.LayerNorm(dim)
        self.mask_norm = nn.LayerNorm(num_classes)
        self.bank = PrototypeBank(
            num_classes,
            num_prototypes,
            dim,
            momentum=momentum,
            sinkhorn_epsilon=sinkhorn_epsilon,
            sinkhorn_iters=sinkhorn_iters,
            assignment=assignment,
            generator=generator,
            init=init,
        )

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Pixel embeddings ``(N, D)``, N = B * h * w in (b, y, x) order, unit norm over channels."""
        projected = self.proj(features)
        pixels = projected.permute(0, 2, 3, 1).reshape(-1, projected.shape[1])
        return F.normalize(self.feat_norm(pixels), dim=1)

    def forward(self, features: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        batch, _, height, width = features.shape
        embeddings = self.embed(features)
        learning = self.training and target is not None
        prototypes = self.bank.prototypes.reshape(-1, self.bank.dim)
        if learning:
            # Snapshot: the update below rewrites the buffer in place, which autograd (that
            # keeps the prototypes for the backward of the similarities) must not see.
            prototypes = prototypes.clone()
        similarities = embeddings @ prototypes.to(embeddings.dtype).t()  # (N, C * K)
        per_prototype = similarities.view(-1, self.num_classes, self.num_prototypes)
        if similarities.requires_grad:
            # max with indices: its backward is one scatter, amax's (which splits ties) five passes
            class_scores = per_prototype.max(dim=2).values
        else:
            class_scores = per_prototype.amax(dim=2)
        class_scores = self.mask_norm(class_scores)
        # contiguous: a channels-last view would make the full-resolution upsampling, its backward
        # and the cross-entropy copy (B, C, H, W) tensors; copying the small logits here is cheaper
        logits = class_scores.view(batch, height, width, self.num_classes).permute(0, 3, 1, 2).contiguous()
        outputs = {"logits": logits}
        if learning:
            labels = self._labels_at(target, height, width)
            labels = torch.where(labels == self.ignore_index, torch.full_like(labels, -1), labels)
            outputs["proto_logits"] = similarities
            outputs["proto_targets"] = self._learn_prototypes(embeddings, similarities, class_scores, labels)
        return outputs

    @staticmethod
    def _labels_at(target: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``target`` ``(B, H, W)`` resized to ``(h, w)`` by nearest neighbour, flattened ``(N,)``."""
        if target.shape[-2:] != (height, width):
            resized = F.interpolate(target.unsqueeze(1).float(), size=(height, width), mode="nearest")
            target = resized.squeeze(1).long()
        return target.reshape(-1)

    @torch.no_grad()
    def _learn_prototypes(
        self,
        embeddings: torch.Tensor,
        similarities: torch.Tensor,
        class_scores: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Cluster, update the bank and return the prototype targets ``(N,)`` (training step 1-4)."""
        correct = class_scores.argmax(dim=1) == labels
        assignment = self.bank.cluster(
            embeddings,
            labels,
            similarities=similarities.view(-1, self.num_classes, self.num_prototypes),
        )
        self.bank.update(embeddings, labels, assignment.update, correct)
        valid = self.bank.valid_labels(labels)
        targets = labels * self.num_prototypes + assignment.target
        return torch.where(valid, targets, torch.full_like(targets, PROTO_IGNORE_INDEX))
