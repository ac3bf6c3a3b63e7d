"""Masked average pooling of feature maps (RCA, eq. 2)."""

from __future__ import annotations

import torch


def masked_average_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Average ``features`` over each mask: ``f_c = sum_xy M_c(x,y) F(x,y) / sum_xy M_c(x,y)`` (RCA eq. 2).

    Args:
        features: ``(B, D, H, W)`` feature maps.
        masks: ``(B, C, H, W)`` non-negative masks, binary or soft, at the features' resolution.

    Returns:
        ``(B, C, D)`` pooled embeddings; a mask whose weights sum to zero gives a zero vector
        (no NaN, and a zero gradient).
    """
    if features.dim() != 4 or masks.dim() != 4:
        raise ValueError(
            f"masked_average_pool: features and masks must be 4-D, got {tuple(features.shape)} "
            f"and {tuple(masks.shape)}"
        )
    if features.shape[0] != masks.shape[0] or features.shape[-2:] != masks.shape[-2:]:
        raise ValueError(
            f"masked_average_pool: masks {tuple(masks.shape)} must share batch size and (H, W) with "
            f"features {tuple(features.shape)}; resize the masks first"
        )
    masks = masks.to(features.dtype)
    weighted_sums = torch.einsum("bchw,bdhw->bcd", masks, features)
    mask_sums = masks.sum(dim=(2, 3)).unsqueeze(-1)
    # an empty mask has a zero numerator; dividing it by 1 keeps the result (and its gradient) zero
    safe_sums = torch.where(mask_sums > 0, mask_sums, torch.ones_like(mask_sums))
    return weighted_sums / safe_sums
