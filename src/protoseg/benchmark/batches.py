"""Benchmark batches drawn in memory from the built-in shapes renderer (no disk, no loader)."""

from __future__ import annotations

import numpy as np
import torch

from ..data.saliency import synthetic_saliency
from ..data.shapes import SHAPES_CLASS_NAMES, render_shapes_sample
from ..data.tags import tags_from_mask


def shapes_batch(
    batch_size: int,
    height: int,
    width: int,
    num_tags: int,
    device: torch.device,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A training batch of the shapes benchmark, already on ``device``.

    Each image is rendered square at ``max(height, width)`` and cropped to ``(height, width)``.

    Returns:
        ``"image"`` ``(B, 3, H, W)`` float32 normalised to [-1, 1] (mean = std = 0.5),
        ``"mask"`` ``(B, H, W)`` int64 (255 = ignore), ``"tags"`` ``(B, num_tags)`` float32 multi-hot
        foreground tags (the shapes' 10 tags, zero-padded or cut to ``num_tags``), ``"saliency"``
        ``(B, 1, H, W)`` float32 synthetic saliency maps (EPS's input, quality 0.7), ``"index"`` ``(B,)``
        int64 and ``"frame"`` ``(B, 6)`` float32 (each crop the top-left window of its square render:
        OAA's inputs).
    """
    if batch_size < 1 or height < 32 or width < 32:
        raise ValueError(
            f"shapes_batch: need batch_size >= 1 and a crop >= 32 x 32, got {batch_size}, {height} x {width}"
        )
    side = max(height, width)
    images, masks, tags, saliency = [], [], [], []
    for index in range(batch_size):
        image, mask, _ = render_shapes_sample(np.random.default_rng([seed, index]), side)
        image, mask = image[:height, :width], mask[:height, :width]
        present = tags_from_mask(mask, len(SHAPES_CLASS_NAMES), has_background=True)
        padded = np.zeros(num_tags, dtype=np.float32)
        count = min(num_tags, len(present))
        padded[:count] = present[:count]
        images.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        masks.append(torch.from_numpy(np.ascontiguousarray(mask)).long())
        tags.append(torch.from_numpy(padded))
        saliency.append(torch.from_numpy(synthetic_saliency(mask, [seed, index], 0.7))[None])
    pixels = torch.stack(images).float().div_(255.0).sub_(0.5).div_(0.5)
    frame = torch.tensor([1.0, 0.0, 1.0, 0.0, side, side])
    return {
        "index": torch.arange(batch_size, device=device),
        "frame": frame.expand(batch_size, -1).contiguous().to(device),
        "image": pixels.to(device),
        "mask": torch.stack(masks).to(device),
        "tags": torch.stack(tags).to(device),
        "saliency": torch.stack(saliency).to(device),
    }
