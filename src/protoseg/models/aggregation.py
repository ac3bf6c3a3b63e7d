"""RCA's regional semantic aggregation: attend from every pixel to the memory's class prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

AGGREGATION_MODES = ("paper", "released")
ATTENTION_SIMILARITIES = ("dot", "cosine")


class SemanticAggregation(nn.Module):
    """Enrich features ``F`` with context gathered from ``C*K`` memory prototypes ``Q``.

    ``mode="paper"`` (the paper's non-parametric attention): ``S = softmax(scale * F Q^T)`` over the
    prototypes, ``F' = S Q`` and the output is ``concat(F, F')`` with ``2D`` channels. ``scale``
    (``attention_scale``) is 1 in the paper; on raw backbone features (norms of tens) the logits then
    span thousands and the softmax is one-hot. ``attention="cosine"`` takes ``S = softmax(scale *
    cos(F, Q))`` instead (``scale`` an inverse temperature).

    ``mode="released"`` (the authors' code): learnable projections, no softmax, ``D`` output channels::

        q = Wq F (1x1 conv), k = Wk Q, v = Wv Q (linear layers, D -> D)
        A = (q k^T) * C / K          # the release's "/ cluster_num * 20" with its 20 classes
        F' = Wa (A v)                # 1x1 conv
        out = Wp concat(F, F')       # 1x1 conv, 2D -> D

    Prototypes are a buffer set by :meth:`set_prototypes` (RCA refreshes them by k-means over the
    memory). Until then, and for classes whose memory is empty, prototypes are invalid and take no
    part: with none valid, ``F' = 0`` (the paper mode's output is then ``concat(F, 0)``).
    """

    prototypes: torch.Tensor
    prototype_valid: torch.Tensor

    def __init__(
        self,
        dim: int,
        num_classes: int,
        num_prototypes: int = 10,
        mode: str = "paper",
        attention_scale: float = 1.0,
        attention: str = "dot",
    ) -> None:
        super().__init__()
        if mode not in AGGREGATION_MODES:
            raise ValueError(f"SemanticAggregation: mode must be one of {AGGREGATION_MODES}, got '{mode}'")
        if attention not in ATTENTION_SIMILARITIES:
            raise ValueError(
                f"SemanticAggregation: attention must be one of {ATTENTION_SIMILARITIES}, got '{attention}'"
            )
        if dim < 1 or num_classes < 1 or num_prototypes < 1:
            raise ValueError(
                f"SemanticAggregation: dim, num_classes and num_prototypes must be >= 1, "
                f"got {dim}, {num_classes}, {num_prototypes}"
            )
        self.dim = dim
        self.num_classes = num_classes
        self.num_prototypes = num_prototypes
        self.mode = mode
        self.attention_scale = attention_scale
        self.attention = attention
        total = num_classes * num_prototypes
        self.register_buffer("prototypes", torch.zeros(total, dim))
        self.register_buffer("prototype_valid", torch.zeros(total, dtype=torch.bool))
        if mode == "released":
            self.query = nn.Conv2d(dim, dim, 1)
            self.key = nn.Linear(dim, dim)
            self.value = nn.Linear(dim, dim)
            self.aggregate = nn.Conv2d(dim, dim, 1)
            self.project = nn.Conv2d(2 * dim, dim, 1)
            self.out_channels = dim
        else:
            self.out_channels = 2 * dim

    @torch.no_grad()
    def set_prototypes(self, centroids: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Store ``centroids (C, K, D)`` as ``Q (C*K, D)``; ``valid``: ``(C,)`` or ``(C, K)`` bool or None."""
        expected = (self.num_classes, self.num_prototypes, self.dim)
        if centroids.shape != expected:
            raise ValueError(
                f"set_prototypes: centroids must have shape {expected}, got {tuple(centroids.shape)}"
            )
        if valid is None:
            valid = torch.ones(expected[:2], dtype=torch.bool, device=centroids.device)
        elif valid.shape == (self.num_classes,):
            valid = valid.unsqueeze(1).expand(-1, self.num_prototypes)
        elif valid.shape != expected[:2]:
            raise ValueError(
                f"set_prototypes: valid must have shape {expected[:1]} or {expected[:2]}, "
                f"got {tuple(valid.shape)}"
            )
        self.prototypes.copy_(centroids.reshape(-1, self.dim))
        self.prototype_valid.copy_(valid.reshape(-1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features (B, D, H, W)`` -> ``(B, out_channels, H, W)``."""
        if features.dim() != 4 or features.shape[1] != self.dim:
            raise ValueError(
                f"SemanticAggregation: features must be (B, {self.dim}, H, W), got {tuple(features.shape)}"
            )
        batch, _, height, width = features.shape
        prototypes = self.prototypes.to(features.dtype)
        valid = self.prototype_valid.to(features.dtype)
        if self.mode == "paper":
            pixels = features.flatten(2).transpose(1, 2)
            if self.attention == "cosine":
                similarity = F.normalize(pixels, dim=-1) @ F.normalize(prototypes, dim=-1).t()
                logits = self.attention_scale * similarity
            else:
                logits = self.attention_scale * pixels @ prototypes.t()
            logits = logits.masked_fill(~self.prototype_valid, torch.finfo(logits.dtype).min)
            # with no valid prototype the softmax is uniform over masked entries; zeroing them gives F' = 0
            attention = logits.softmax(dim=-1) * valid
            context = (attention @ prototypes).transpose(1, 2).reshape(batch, self.dim, height, width)
            return torch.cat([features, context], dim=1)
        queries = self.query(features).flatten(2).transpose(1, 2)
        keys = self.key(prototypes)
        values = self.value(prototypes) * valid.unsqueeze(1)
        affinity = queries @ keys.t() * (self.num_classes / self.num_prototypes)
        context = (affinity @ values).transpose(1, 2).reshape(batch, self.dim, height, width)
        return self.project(torch.cat([features, self.aggregate(context)], dim=1))
