"""Online attention accumulation (OAA; Jiang et al., ICCV 2019): the per-step attention maps and the rule
that fuses them into each image's accumulated map.

In every epoch from ``start_epoch`` on (the release: from the second), each training image's attention map
of each tagged class, ``A_c = relu(CAM_c) / (max_xy relu(CAM_c) + 1e-8)`` stored as 8-bit levels
``round(255 A_c)``, is fused into the image's accumulated map ``M_c`` by the element-wise maximum,
``M_c <- max(M_c, A_c)`` (eq. 1 of the paper), when the class passes a quality filter:

- ``top_tags`` (the OAA release): ``c`` is among the ``n`` highest-scoring classes of the image, ``n`` its
  number of tags (scores ``sigmoid(GAP(CAM))``);
- ``probability`` (RCA's release of OAA): ``sigmoid(GAP(CAM_c)) >= min_probability`` (0.1).

In the last epoch a tagged class that has no accumulated map yet takes the step's map whatever the filter
says (both releases), so that every image seen then has one. Pure tensor functions, no host
synchronisation; the per-image store is :class:`protoseg.prototypes.AttentionStore`.
"""

from __future__ import annotations

import torch

OAA_FILTERS = ("top_tags", "probability")
LEVELS = 255


def attention_maps(cams: torch.Tensor) -> torch.Tensor:
    """``cams`` ``(B, C, h, w)`` -> float32 ``relu(cams) / (max_xy relu(cams) + 1e-8)`` in ``[0, 1)``."""
    maps = cams.float().clamp_min(0.0)
    return maps / (maps.amax(dim=(2, 3), keepdim=True) + 1e-8)


def quantise(maps: torch.Tensor) -> torch.Tensor:
    """Maps in ``[0, 1]`` -> uint8 levels ``round(255 x)`` (round half to even, as the releases' PNG
    writes of float arrays)."""
    return (maps.float() * LEVELS).round().clamp(0, LEVELS).to(torch.uint8)


def passes_filter(
    scores: torch.Tensor, tags: torch.Tensor, mode: str = "top_tags", min_probability: float = 0.1
) -> torch.Tensor:
    """``(B, C)`` bool: which classes' maps of this step may be fused (see the module docstring).

    Args:
        scores: ``(B, C)`` class probabilities ``sigmoid(GAP(CAM))``.
        tags: ``(B, C)`` multi-hot tags.
        mode: ``"top_tags"`` or ``"probability"``.
        min_probability: the ``probability`` filter's threshold.
    """
    if mode not in OAA_FILTERS:
        raise ValueError(f"passes_filter: mode must be one of {OAA_FILTERS}, got '{mode}'")
    if scores.dim() != 2 or tags.shape != scores.shape:
        raise ValueError(
            f"passes_filter: scores and tags must both be (B, C), got {tuple(scores.shape)} and "
            f"{tuple(tags.shape)}"
        )
    if mode == "probability":
        return scores >= min_probability
    # rank of each class by descending score (ties: lower class index first)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    return ranks < (tags > 0.5).sum(dim=1, keepdim=True)


def fuse(
    accumulated: torch.Tensor,
    counts: torch.Tensor,
    update: torch.Tensor,
    tagged: torch.Tensor,
    passed: torch.Tensor,
    final: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of one image: the new accumulated maps and fusion counts.

    Args:
        accumulated: ``(C, Gh, Gw)`` uint8 maps so far (zeros where a class has none).
        counts: ``(C,)`` int32 how many steps each class's map holds (0: none).
        update: ``(C, Gh, Gw)`` uint8 this step's attention maps.
        tagged: ``(C,)`` bool the image's tags.
        passed: ``(C,)`` bool :func:`passes_filter`.
        final: whether the step lies in the last epoch.

    Returns:
        ``(accumulated, counts)``: ``max(M_c, A_c)`` for tagged classes that pass the filter; ``A_c`` for a
        tagged class without a map in the last epoch; unchanged otherwise.
    """
    first_final = tagged & (counts == 0) if final else torch.zeros_like(tagged)
    fused = tagged & passed & ~first_final
    merged = torch.where(fused.view(-1, 1, 1), torch.maximum(accumulated, update), accumulated)
    merged = torch.where(first_final.view(-1, 1, 1), update, merged)
    return merged, counts + (fused | first_final).to(counts.dtype)
