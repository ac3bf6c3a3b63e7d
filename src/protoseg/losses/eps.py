"""EPS's saliency loss (Lee et al., "Railroad is not a Train: Saliency as Pseudo-pixel Supervision for
Weakly Supervised Semantic Segmentation", CVPR 2021, Eq. 2-4).

The CAM has C+1 channels (here channel 0 is the background; the release puts it last). With
``p = softmax_c(cam)`` and the saliency map ``S`` resized to the CAM (nearest, as released):

- a tagged class c counts as foreground when its rounded map overlaps the rounded saliency enough:
  ``sum(round(p_c) round(S)) / sum(round(p_c) + 1e-4) > tau`` (the release's ratio, the ``1e-4`` added
  per pixel), otherwise as background (a class the detector does not see, e.g. "railroad");
- ``M_fg = sum_{c fg} p_c``, ``M_bg = p_0 + sum_{c tagged, not fg} p_c``;
- predicted saliency ``S_hat = lam M_fg + (1 - lam) (1 - M_bg)``; loss ``mean (S_hat - S)^2``.

The overlap test is made on detached maps; the gradient flows through ``p``. Torch only, no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OVERLAP_EPSILON = 1e-4


def saliency_loss(
    cam: torch.Tensor, saliency: torch.Tensor, tags: torch.Tensor, tau: float = 0.5, lam: float = 0.5
) -> dict[str, torch.Tensor]:
    """EPS's saliency loss of one view.

    Args:
        cam: ``(B, C+1, h, w)`` raw CAM, channel 0 = background.
        saliency: ``(B, 1, H, W)`` in [0, 1].
        tags: ``(B, C)`` multi-hot foreground tags.
        tau: overlap ratio above which a tagged class is foreground.
        lam: weight of the foreground map in the predicted saliency.

    Returns:
        ``"loss"`` (with gradient), ``"prediction"`` ``(B, 1, h, w)`` and ``"foreground"`` ``(B, C)`` bool
        (the tagged classes counted as foreground).
    """
    if cam.dim() != 4 or saliency.dim() != 4 or saliency.shape[1] != 1:
        raise ValueError(
            f"EPS: cam must be (B, C+1, h, w) and saliency (B, 1, H, W), got {tuple(cam.shape)} and "
            f"{tuple(saliency.shape)}"
        )
    if tuple(tags.shape) != (cam.shape[0], cam.shape[1] - 1):
        raise ValueError(f"EPS: tags must be {(cam.shape[0], cam.shape[1] - 1)}, got {tuple(tags.shape)}")
    dtype = torch.promote_types(cam.dtype, torch.float32)  # float32 under autocast, float64 kept
    probabilities = cam.to(dtype).softmax(dim=1)
    target = F.interpolate(saliency.to(dtype), size=cam.shape[-2:], mode="nearest")
    foreground = probabilities[:, 1:]
    rounded = torch.round(foreground.detach())
    overlap = (rounded * torch.round(target)).flatten(2).sum(-1) / (rounded + OVERLAP_EPSILON).flatten(2).sum(
        -1
    )
    tagged = tags > 0.5
    is_foreground = tagged & (overlap > tau)
    is_background = tagged & ~is_foreground
    foreground_map = (foreground * is_foreground[:, :, None, None]).sum(dim=1, keepdim=True)
    background_map = probabilities[:, :1] + (foreground * is_background[:, :, None, None]).sum(
        dim=1, keepdim=True
    )
    prediction = lam * foreground_map + (1 - lam) * (1 - background_map)
    return {
        "loss": F.mse_loss(prediction, target),
        "prediction": prediction,
        "foreground": is_foreground,
    }
