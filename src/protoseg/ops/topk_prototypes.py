"""Prototype estimation from the top-K most confident pixels (PPC, CVPR 2022, Sec. 3.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def topk_weighted_prototypes(
    confidence: torch.Tensor, embeddings: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One prototype per class: the confidence-weighted mean of its top-K pixels, L2-normalised.

    Implements PPC Eq. 2, ``p_c = sum_{i in Omega_c} m_{c,i} v_i / sum_{i in Omega_c} m_{c,i}``, where
    ``Omega_c`` is the set of the ``top_k`` pixels with the highest confidence ``m_{c,i}`` over ALL the
    pixels given (the whole batch), followed by L2 normalisation.

    Args:
        confidence: ``(N, M)`` non-negative confidence of each of N pixels for each of M classes.
        embeddings: ``(N, D)`` pixel embeddings (PPC passes L2-normalised projected features).
        top_k: pixels per class; clamped to N when the batch has fewer pixels.

    Returns:
        ``prototypes`` ``(M, D)`` (a zero row for an invalid class) and ``valid`` ``(M,)`` bool: a class
        is valid when the confidences of its top-K pixels do not all vanish, i.e. when at least one
        pixel of the batch has a positive confidence for it.

    No host synchronisation: ``top_k`` is a Python int, so every shape is static.
    """
    if confidence.dim() != 2 or embeddings.dim() != 2 or confidence.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"topk_weighted_prototypes: expected confidence (N, M) and embeddings (N, D), got "
            f"{tuple(confidence.shape)} and {tuple(embeddings.shape)}"
        )
    if top_k < 1:
        raise ValueError(f"topk_weighted_prototypes: top_k must be >= 1, got {top_k}")
    k = min(top_k, confidence.shape[0])
    weights, indices = torch.topk(confidence.t(), k=k, dim=1)  # (M, k)
    weights = weights.clamp_min(0)
    selected = embeddings[indices.reshape(-1)].reshape(*indices.shape, embeddings.shape[1])  # (M, k, D)
    weight_sum = weights.sum(dim=1, keepdim=True)  # (M, 1)
    valid = weight_sum.squeeze(1) > 0
    weighted_sum = (weights.unsqueeze(-1) * selected).sum(dim=1)
    weighted_mean = weighted_sum / weight_sum.clamp_min(torch.finfo(weights.dtype).tiny)
    return F.normalize(weighted_mean, dim=1), valid
