"""ProtoSeg head: pixels classified by their nearest class prototype (Zhou et al., CVPR 2022)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.labels import IGNORE_INDEX, resize_labels
from ...prototypes.bank import PrototypeBank

__all__ = [
    "PROJECTIONS",
    "PROJECTION_NORMS",
    "PROTO_IGNORE_INDEX",
    "UPDATE_PIXELS",
    "ProjectionNorm",
    "PrototypeUpdate",
    "ProtoSegHead",
]

PROJECTIONS = ("mlp", "none")
PROJECTION_NORMS = ("none", "released", "batch", "instance", "spatial_rms", "batch_rms")
UPDATE_PIXELS = ("correct", "all")


class ProjectionNorm(nn.Module):
    """Normalisation of the projected features ``(B, D, h, w)`` before ``feat_norm`` (same shape out).

    - ``none``: identity.
    - ``released``: ``F.normalize(x, dim=-1)``, the released ``ProjectionHead``: an L2 over the WIDTH
      axis, i.e. each (image, channel, row) is divided by its energy along the row. A pixel's
      embedding then depends on the other pixels of its row, so on the input's width.
    - ``batch``: ``BatchNorm2d(D)`` (per channel over batch and pixels in training, running
      statistics at inference: no dependence on the input size).
    - ``instance``: per image and channel, centred and scaled by the std over the image's pixels
      (``InstanceNorm2d``, no affine).
    - ``spatial_rms``: per image and channel, divided by the root mean square over the image's
      pixels (the released rescaling, over all pixels instead of one row and as a mean, so that it
      does not grow with the image size).
    - ``batch_rms``: per channel divided by the root mean square over the batch's pixels in training
      and by a running mean square at inference (momentum 0.1, like BatchNorm): ``spatial_rms``'s
      rescaling without centring, with BatchNorm's per-pixel inference.
    """

    RUNNING_MOMENTUM = 0.1  # of batch_rms's running mean square (BatchNorm's default)
    EPSILON = 1e-5  # of batch_rms (BatchNorm's default)

    def __init__(self, mode: str, channels: int) -> None:
        super().__init__()
        if mode not in PROJECTION_NORMS:
            raise ValueError(f"ProjectionNorm mode must be one of {PROJECTION_NORMS}, got '{mode}'")
        self.mode = mode
        self.batch_norm = nn.BatchNorm2d(channels) if mode == "batch" else None
        if mode == "batch_rms":
            self.register_buffer("running_mean_square", torch.ones(channels))

    def extra_repr(self) -> str:
        return f"mode={self.mode}"

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.mode == "released":
            return F.normalize(features, p=2, dim=-1)
        if self.mode == "batch":
            return self.batch_norm(features)
        if self.mode == "instance":
            return F.instance_norm(features)
        if self.mode == "spatial_rms":
            mean_square = features.float().pow(2).mean(dim=(2, 3), keepdim=True)
            return features * torch.rsqrt(mean_square + 1e-12).to(features.dtype)
        if self.mode == "batch_rms":
            return self._batch_rms(features)
        return features

    def _batch_rms(self, features: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean_square = features.float().pow(2).mean(dim=(0, 2, 3))
            with torch.no_grad():
                self.running_mean_square.lerp_(mean_square.detach(), self.RUNNING_MOMENTUM)
        else:
            mean_square = self.running_mean_square
        scale = torch.rsqrt(mean_square + self.EPSILON).to(features.dtype)
        return features * scale.view(1, -1, 1, 1)


PROTO_IGNORE_INDEX = -1
"""Value of ``"proto_targets"`` on ignored pixels. Not 255: with C * K > 255 (ADE20K, K = 10)
255 is a valid target ``c * K + k``."""


class PrototypeUpdate(NamedTuple):
    """What a training forward hands to :meth:`ProtoSegHead.update_prototypes`, all ``(N,)`` but the
    detached embeddings ``(N, D)``: labels (-1 ignored), the prototype index each pixel updates
    (argmax or the Gumbel draw), and whether the pixel was predicted correctly."""

    embeddings: torch.Tensor
    labels: torch.Tensor
    assignment: torch.Tensor
    correct: torch.Tensor


class ProtoSegHead(nn.Module):
    """Non-learnable prototypes instead of a linear classifier (ProtoSeg, CVPR 2022).

    ``forward(features (B, Cin, h, w), target (B, H, W) | None)`` returns

    - ``"logits"`` ``(B, C, h, w)``: ``mask_norm(max_k <x, p_{c,k}>)`` (nearest prototype), x the projected,
      LayerNorm-ed and L2-normalised (over channels) pixel embedding;
    - in training with a target, also ``"proto_logits"`` ``(N, C * K)`` (all pixel-prototype
      similarities, N = B * h * w, gradient flows to x) and ``"proto_targets"`` ``(N,)`` int64
      ``c * K + k`` for labelled pixels, ``PROTO_IGNORE_INDEX`` (-1) for ignored ones (the targets
      come from the within-class Sinkhorn clustering, no gradient), and ``"prototype_update"``, a
      :class:`PrototypeUpdate` to pass to :meth:`update_prototypes` after the backward pass (the
      momentum update, identical on all DDP ranks). Sinkhorn and update run in float32; under
      autocast the similarities they start from are those of the forward (half precision, as
      released).

    Example::

        head = ProtoSegHead(in_channels=720, num_classes=19, num_prototypes=10)
        outputs = head(features, target=labels)
        ProtoSegLoss()(outputs, labels)["loss"].backward()
        head.update_prototypes(outputs["prototype_update"])

    Args:
        in_channels: Cin of the decoder features.
        num_classes: C.
        num_prototypes: K per class.
        proj_dim: D of the embedding (``None``: D = Cin, as in the paper).
        projection: ``"mlp"`` (the paper's ``proj``: 1x1 conv Cin -> Cin, ReLU, 1x1 conv Cin -> D) or
            ``"none"`` (the decoder features themselves are embedded, D = Cin: inference is then the
            linear head's cost plus the C * K - C extra similarity columns).
        projection_norm: normalisation of the projected features before ``feat_norm`` (see
            :class:`ProjectionNorm`; ``"released"`` is the release's width-axis L2).
        cls_head: the released head's 3x3 conv + BN + ReLU + Dropout2d(0.1) before the projection.
        momentum, assignment, sinkhorn_epsilon, sinkhorn_iters, generator, init, clustering: see
            :class:`~protoseg.prototypes.PrototypeBank`.
        update_pixels: which labelled pixels move their assigned prototype: ``"correct"`` (the
            release's ``prototype_learning``: only the pixels the head predicts correctly) or
            ``"all"`` (an ablation: every labelled pixel, predicted correctly or not).
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
        ignore_index: int = IGNORE_INDEX,
        generator: torch.Generator | None = None,
        init: str = "random",
        projection: str = "mlp",
        projection_norm: str = "batch",
        cls_head: bool = False,
        clustering: str = "sinkhorn",
        update_pixels: str = "correct",
    ) -> None:
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f"ProtoSegHead projection must be one of {PROJECTIONS}, got '{projection}'")
        if update_pixels not in UPDATE_PIXELS:
            raise ValueError(
                f"ProtoSegHead update_pixels must be one of {UPDATE_PIXELS}, got '{update_pixels}'"
            )
        if projection == "none" and proj_dim not in (None, in_channels):
            raise ValueError(
                f"ProtoSegHead projection 'none' embeds the {in_channels}-channel decoder features: "
                f"proj_dim must be None or {in_channels}, got {proj_dim}"
            )
        dim = proj_dim or in_channels
        self.num_classes = num_classes
        self.num_prototypes = num_prototypes
        self.ignore_index = ignore_index
        self.update_pixels = update_pixels
        # the released head's cls_head: 3x3 conv + BN + ReLU + Dropout2d(0.1) before the projection
        self.cls_head: nn.Module = (
            nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, padding=1),
                nn.BatchNorm2d(in_channels),
                nn.ReLU(),
                nn.Dropout2d(0.1),
            )
            if cls_head
            else nn.Identity()
        )
        if projection == "mlp":
            self.proj: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 1), nn.ReLU(inplace=True), nn.Conv2d(in_channels, dim, 1)
            )
        else:
            self.proj = nn.Identity()
        self.projection_norm = ProjectionNorm(projection_norm, dim)
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
            clustering=clustering,
        )

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Pixel embeddings ``(N, D)``, N = B * h * w in (b, y, x) order, unit norm over channels."""
        projected = self.projection_norm(self.proj(self.cls_head(features)))
        pixels = projected.permute(0, 2, 3, 1).reshape(-1, projected.shape[1])
        return F.normalize(self.feat_norm(pixels), dim=1)

    def forward(self, features: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, Any]:
        batch, _, height, width = features.shape
        embeddings = self.embed(features)
        learning = self.training and target is not None
        prototypes = self.bank.prototypes.reshape(-1, self.bank.dim)
        if learning:
            # Snapshot: update_prototypes rewrites the buffer in place, which autograd (that keeps
            # the prototypes for the backward of the similarities) must not see.
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
        outputs: dict[str, Any] = {"logits": logits}
        if learning:
            labels = resize_labels(target, (height, width)).reshape(-1)
            labels = torch.where(labels == self.ignore_index, torch.full_like(labels, -1), labels)
            targets, update = self._cluster(embeddings, similarities, class_scores, labels)
            outputs["proto_logits"] = similarities
            outputs["proto_targets"] = targets
            outputs["prototype_update"] = update
        return outputs

    @torch.no_grad()
    def _cluster(
        self,
        embeddings: torch.Tensor,
        similarities: torch.Tensor,
        class_scores: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, PrototypeUpdate]:
        """Within-class clustering (training steps 1-3): the prototype targets ``(N,)`` and the pending
        momentum update (step 4, applied by :meth:`update_prototypes`)."""
        valid = self.bank.valid_labels(labels)
        # the pixels that may move their prototype (the bank also drops unlabelled ones)
        correct = class_scores.argmax(dim=1) == labels if self.update_pixels == "correct" else valid
        assignment = self.bank.cluster(
            embeddings,
            labels,
            similarities=similarities.view(-1, self.num_classes, self.num_prototypes),
        )
        targets = labels * self.num_prototypes + assignment.target
        targets = torch.where(valid, targets, torch.full_like(targets, PROTO_IGNORE_INDEX))
        return targets, PrototypeUpdate(embeddings.detach(), labels, assignment.update, correct)

    @torch.no_grad()
    def update_prototypes(self, update: PrototypeUpdate) -> None:
        """Momentum update of the prototypes from a training forward's ``outputs["prototype_update"]``.

        Call it once per training step, after the backward pass (the optimizer step may come before or
        after); under DDP every rank calls it and ends with identical prototypes.
        """
        self.bank.update(update.embeddings, update.labels, update.assignment, update.correct)
