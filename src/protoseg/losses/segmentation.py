"""Pixel-wise cross-entropy of logits upsampled to the label resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.labels import IGNORE_INDEX


def upsampled_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """CE between ``logits`` (B, C, h, w), bilinearly upsampled, and ``target`` (B, H, W).

    With ``class_weights`` (C,) the mean is weighted: ``sum_n w_{y_n} l_n / sum_n w_{y_n}`` over the
    labelled pixels (``nn.CrossEntropyLoss(weight=...)``, the releases' class-weighted CE). Returns 0
    (with a gradient path) when every pixel is ignored, instead of NaN.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    labelled = target != ignore_index
    if class_weights is None:
        denominator = labelled.sum()
    else:
        class_weights = class_weights.to(device=logits.device, dtype=torch.float32)
        safe = torch.where(labelled, target, torch.zeros_like(target))
        denominator = (class_weights[safe] * labelled).sum()
    total = F.cross_entropy(
        logits.float(), target, weight=class_weights, ignore_index=ignore_index, reduction="sum"
    )
    return total / denominator.clamp_min(1e-12 if class_weights is not None else 1)


def class_weight_buffer(module: nn.Module, class_weights) -> None:
    """Register ``class_weights`` (a sequence of C floats, or None) as the non-persistent buffer
    ``module.class_weights`` (it follows the module to its device; checkpoints do not store it)."""
    values = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32)
    if values is not None and (values.dim() != 1 or not torch.all(values >= 0) or not values.sum() > 0):
        raise ValueError(f"class weights must be C values >= 0, not all 0; got {list(class_weights)}")
    module.register_buffer("class_weights", values, persistent=False)


class SegmentationCELoss(nn.Module):
    """Criterion of the linear head: ``forward(outputs, target, iteration=0) -> {"loss", "ce"}``.

    ``class_weights``: optional per-class weights of the CE (see :func:`upsampled_cross_entropy`).
    """

    class_weights: torch.Tensor | None

    def __init__(self, ignore_index: int = IGNORE_INDEX, class_weights=None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        class_weight_buffer(self, class_weights)

    def forward(
        self, outputs: dict[str, torch.Tensor], target: torch.Tensor, iteration: int = 0
    ) -> dict[str, torch.Tensor]:
        ce = upsampled_cross_entropy(outputs["logits"], target, self.ignore_index, self.class_weights)
        return {"loss": ce, "ce": ce.detach()}
