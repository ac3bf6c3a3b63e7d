"""SEAM's training losses (Wang et al., CVPR 2020) between a source view and its downscaled target view.

With ``y`` the CAMs of the source image (resized to the target view) and of the target view, ``y_rv``
their PCM-refined CAMs (all at image resolution), ``t`` the tags with the background always on:

- classification: multilabel soft margin on GAP of the foreground CAM, mean of both views;
- adaptive min-pooling (``rvmin``, the release's extra term): mean over the ``hw / 4`` lowest pixels of
  ``relu(max_c (y_rv t)_c)`` per image, mean of both views;
- equivariant regularisation (Eq. 3): ``ER = mean |max_norm(y_S)|_T - max_norm(y_T)|`` over the
  foreground channels, both multiplied by ``t``;
- equivariant cross regularisation (Eq. 8): ``ECR = topk_mean |onehot(y_T) - max_norm(y_rv_S)| +
  topk_mean |onehot(y_S) - max_norm(y_rv_T)|``, the top ``fraction`` (0.2) of the ``(C+1) h w`` entries
  of each image, where ``onehot`` keeps, per pixel, the background channel (``1 - max`` foreground) and
  the foreground maximum only (detached).

``max_norm`` is the release's: ``relu(x - min - 1e-5) / (max - min + 1e-5)`` of ``relu(x)`` per image and
channel. Torch only; every function is differentiable where the release's is, and makes no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_NORM_EPSILON = 1e-5


def max_norm(cam: torch.Tensor, epsilon: float = MAX_NORM_EPSILON) -> torch.Tensor:
    """``(B, K, h, w)`` -> ``relu(r - min - eps) / (max - min + eps)`` with ``r = relu(cam)``, per image
    and channel (SEAM's ``max_norm``)."""
    rectified = F.relu(cam)
    flat = rectified.flatten(2)
    maximum = flat.amax(dim=2)[:, :, None, None]
    minimum = flat.amin(dim=2)[:, :, None, None]
    return F.relu(rectified - minimum - epsilon) / (maximum - minimum + epsilon)


def adaptive_min_pooling_loss(cam: torch.Tensor) -> torch.Tensor:
    """``cam`` ``(B, C, H, W)`` foreground maps -> ``sum relu(lowest hw/4 of max_c cam) / (B hw/4)``."""
    batch, _, height, width = cam.shape
    count = max(1, height * width // 4)
    lowest = torch.topk(cam.amax(dim=1).flatten(1), k=count, dim=1, largest=False).values
    return F.relu(lowest).sum() / (count * batch)


def max_onehot(cam: torch.Tensor) -> torch.Tensor:
    """Channel 0 kept; each foreground channel zeroed where it is not the foreground maximum."""
    foreground = cam[:, 1:]
    top = foreground.amax(dim=1, keepdim=True)
    return torch.cat(
        [cam[:, :1], torch.where(foreground != top, torch.zeros_like(foreground), foreground)], 1
    )


def topk_mean(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the ``int(fraction * n)`` (at least 1) largest of the ``n`` entries of each image."""
    flat = values.flatten(1)
    count = max(1, int(flat.shape[1] * fraction))
    return torch.topk(flat, k=count, dim=1).values.mean()


def with_background(cam: torch.Tensor) -> torch.Tensor:
    """Channel 0 replaced by ``1 - max`` of the foreground channels (not in place)."""
    return torch.cat([1 - cam[:, 1:].amax(dim=1, keepdim=True), cam[:, 1:]], dim=1)


def seam_losses(
    cam_source: torch.Tensor,
    refined_source: torch.Tensor,
    cam_target: torch.Tensor,
    refined_target: torch.Tensor,
    tags: torch.Tensor,
    ecr_fraction: float = 0.2,
    align_corners: bool = False,
) -> dict[str, torch.Tensor]:
    """SEAM's loss terms of one source / target pair (see the module docstring).

    Args:
        cam_source, refined_source: ``(B, C+1, H, W)`` raw and PCM-refined CAMs of the source view at its
            image size (channel 0 = background).
        cam_target, refined_target: ``(B, C+1, H', W')`` the same for the target view (the source
            resized), at its image size.
        tags: ``(B, C)`` multi-hot foreground tags.
        ecr_fraction: share of the ``(C+1) H' W'`` entries of each image the ECR averages (0.2).
        align_corners: of the bilinear resize of the source maps to the target size (the release: True).

    Returns:
        ``"cls"``, ``"rvmin"``, ``"er"``, ``"ecr"`` scalars with their gradients.
    """
    label = torch.cat([torch.ones_like(tags[:, :1]), tags], dim=1).to(cam_source.dtype)[:, :, None, None]
    scores_source = cam_source.mean(dim=(2, 3))[:, 1:]
    scores_target = cam_target.mean(dim=(2, 3))[:, 1:]
    classification = 0.5 * (
        F.multilabel_soft_margin_loss(scores_source, tags.to(scores_source.dtype))
        + F.multilabel_soft_margin_loss(scores_target, tags.to(scores_target.dtype))
    )
    rvmin = 0.5 * (
        adaptive_min_pooling_loss((refined_source * label)[:, 1:])
        + adaptive_min_pooling_loss((refined_target * label)[:, 1:])
    )
    size = cam_target.shape[-2:]

    def to_target(maps: torch.Tensor) -> torch.Tensor:
        return F.interpolate(max_norm(maps), size=size, mode="bilinear", align_corners=align_corners) * label

    cam_s, refined_s = to_target(cam_source), to_target(refined_source)
    cam_t, refined_t = max_norm(cam_target) * label, max_norm(refined_target) * label
    equivariance = (cam_s[:, 1:] - cam_t[:, 1:]).abs().mean()
    cam_s, cam_t = with_background(cam_s), with_background(cam_t)
    cross = topk_mean((max_onehot(cam_t.detach()) - refined_s).abs(), ecr_fraction) + topk_mean(
        (max_onehot(cam_s.detach()) - refined_t).abs(), ecr_fraction
    )
    return {"cls": classification, "rvmin": rvmin, "er": equivariance, "ecr": cross}
