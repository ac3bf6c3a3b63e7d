"""Maps of a transformed (cropped, rescaled, flipped) training image resampled into its original image.

A sample's ``frame`` (:class:`protoseg.data.transforms.Frame`) says where each pixel of the transformed
image came from: ``y0 = sy * y + oy``, ``x0 = sx * x + ox`` in continuous pixel coordinates (pixel ``i``
spans ``[i, i + 1)``) of the ``H0 x W0`` original. OAA accumulates per-image attention maps across
epochs, each epoch seeing another crop of the image; this puts them on one grid of the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_image_grid(
    maps: torch.Tensor, frames: torch.Tensor, image_size: tuple[int, int], grid_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample ``maps`` of transformed images onto a ``grid_size`` grid over each original image.

    Args:
        maps: ``(B, C, h, w)`` maps covering the transformed images (a CAM at feature resolution; the
            ``h x w`` cells span the ``image_size`` image evenly, as CAM inference assumes).
        frames: ``(B, 6)`` ``[sy, oy, sx, ox, H0, W0]`` per image.
        image_size: ``(H, W)`` of the transformed images.
        grid_size: ``(Gh, Gw)`` cells over each original ``H0 x W0`` image.

    Returns:
        ``(B, C, Gh, Gw)`` float32: at each cell centre ``((i + 1/2) H0 / Gh, (j + 1/2) W0 / Gw)`` of the
        original, the bilinear sample (``align_corners=False``, border values beyond the last cell centres)
        of ``maps`` at the transformed position ``((y0 - oy) / sy, (x0 - ox) / sx)``; 0 where that position
        lies outside the transformed image; and ``covered`` ``(B, 1, Gh, Gw)`` bool, where it lies inside.
        When the transform is the identity and the grid is the maps' own, the maps come back unchanged.
    """
    if maps.dim() != 4 or frames.shape != (maps.shape[0], 6):
        raise ValueError(
            f"to_image_grid: maps must be (B, C, h, w) and frames (B, 6), got {tuple(maps.shape)} and "
            f"{tuple(frames.shape)}"
        )
    height, width = image_size
    grid_height, grid_width = grid_size
    frames = frames.to(device=maps.device, dtype=torch.float32)
    sy, oy, sx, ox, original_height, original_width = frames.unbind(1)
    steps_y = torch.arange(grid_height, device=maps.device, dtype=torch.float32) + 0.5
    steps_x = torch.arange(grid_width, device=maps.device, dtype=torch.float32) + 0.5
    # original cell centres -> transformed pixel coordinates, per image: (B, Gh) and (B, Gw)
    centres_y = steps_y.unsqueeze(0) * (original_height / grid_height).unsqueeze(1)
    centres_x = steps_x.unsqueeze(0) * (original_width / grid_width).unsqueeze(1)
    y = (centres_y - oy.unsqueeze(1)) / sy.unsqueeze(1)
    x = (centres_x - ox.unsqueeze(1)) / sx.unsqueeze(1)
    covered = ((y >= 0) & (y < height)).unsqueeze(2) & ((x >= 0) & (x < width)).unsqueeze(1)
    grid = torch.stack(
        [
            (2.0 * x / width - 1.0).unsqueeze(1).expand(-1, grid_height, -1),
            (2.0 * y / height - 1.0).unsqueeze(2).expand(-1, -1, grid_width),
        ],
        dim=-1,
    )
    sampled = F.grid_sample(maps.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    covered = covered.unsqueeze(1)
    return sampled * covered, covered
