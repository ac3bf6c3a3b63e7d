"""ProtoSeg's training objective: CE + pixel-prototype contrast (PPC) + pixel-prototype distance (PPD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.labels import IGNORE_INDEX
from .segmentation import class_weight_buffer, upsampled_cross_entropy

__all__ = ["ProtoSegLoss", "pixel_prototype_contrast_loss", "pixel_prototype_distance_loss"]


def _valid_targets(
    proto_logits: torch.Tensor, proto_targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of targets inside ``[0, C * K)`` and the targets with the others replaced by 0."""
    valid = (proto_targets >= 0) & (proto_targets < proto_logits.shape[1])
    return valid, torch.where(valid, proto_targets, torch.zeros_like(proto_targets))


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``valid``; 0 with a gradient path when nothing is valid."""
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp_min(1)


def pixel_prototype_contrast_loss(
    proto_logits: torch.Tensor, proto_targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """PPC (Eq. 11): ``mean_n -log softmax(s_n / tau)[t_n]`` over the labelled pixels.

    Args:
        proto_logits: ``(N, C * K)`` pixel-prototype cosine similarities.
        proto_targets: ``(N,)`` int64 ``c * K + k``; any value outside ``[0, C * K)`` is ignored.
        temperature: tau of the paper's equation; the released code has none (tau = 1).
    """
    valid, targets = _valid_targets(proto_logits, proto_targets)
    logits = proto_logits.float() if temperature == 1.0 else proto_logits.float() / temperature
    per_pixel = F.cross_entropy(logits, targets, reduction="none")
    return _masked_mean(per_pixel, valid)


def pixel_prototype_distance_loss(proto_logits: torch.Tensor, proto_targets: torch.Tensor) -> torch.Tensor:
    """PPD (Eq. 12): ``mean_n (1 - s[n, t_n])^2`` over the labelled pixels (targets as in PPC)."""
    valid, targets = _valid_targets(proto_logits, proto_targets)
    own = proto_logits.float().gather(1, targets.unsqueeze(1)).squeeze(1)
    return _masked_mean((1.0 - own).pow(2), valid)


class ProtoSegLoss(nn.Module):
    """``L = CE + proto_contrast_weight * PPC + proto_distance_weight * PPD`` (ProtoSeg paper, CE of
    Eq. 7 + Eq. 11 + Eq. 12).

    ``forward(outputs, target (B, H, W), iteration=0)`` returns ``"loss"`` and the detached
    terms ``"ce"``, ``"proto_contrast"`` (PPC), ``"proto_distance"`` (PPD). CE is over
    ``outputs["logits"]`` upsampled bilinearly to the target size. Without ``"proto_logits"`` /
    ``"proto_targets"`` in ``outputs`` (eval mode) the loss is the CE alone. ``temperature`` divides
    the similarities in PPC only; the paper's equation has one, the released code does not, so the
    default 1.0 reproduces the released numbers. ``class_weights``: optional per-class CE weights.
    """

    def __init__(
        self,
        proto_contrast_weight: float = 0.01,
        proto_distance_weight: float = 0.001,
        temperature: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        class_weights=None,
    ) -> None:
        super().__init__()
        class_weight_buffer(self, class_weights)
        if not temperature > 0:
            raise ValueError(f"ProtoSegLoss temperature must be > 0, got {temperature}")
        self.proto_contrast_weight = proto_contrast_weight
        self.proto_distance_weight = proto_distance_weight
        self.temperature = temperature
        self.ignore_index = ignore_index

    def forward(
        self, outputs: dict[str, torch.Tensor], target: torch.Tensor, iteration: int = 0
    ) -> dict[str, torch.Tensor]:
        ce = upsampled_cross_entropy(outputs["logits"], target, self.ignore_index, self.class_weights)
        if "proto_logits" not in outputs or "proto_targets" not in outputs:
            return {"loss": ce, "ce": ce.detach()}
        proto_logits, proto_targets = outputs["proto_logits"], outputs["proto_targets"]
        ppc = pixel_prototype_contrast_loss(proto_logits, proto_targets, self.temperature)
        ppd = pixel_prototype_distance_loss(proto_logits, proto_targets)
        loss = ce + self.proto_contrast_weight * ppc + self.proto_distance_weight * ppd
        return {
            "loss": loss,
            "ce": ce.detach(),
            "proto_contrast": ppc.detach(),
            "proto_distance": ppd.detach(),
        }
