"""Test-time inference: whole-image or sliding-window, multi-scale and horizontal flip.

All functions take a ``logits_fn(images (B, 3, h, w)) -> (B, C, h, w)`` (logits at input size,
e.g. :meth:`Segmentor.predict`) and return class probabilities summed over the augmentations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def sliding_window_logits(
    logits_fn: LogitsFn, images: torch.Tensor, num_classes: int, window: Sequence[int], stride: Sequence[int]
) -> torch.Tensor:
    """Average the logits of overlapping ``window``-sized crops; images smaller than the window are
    padded (the padding is cropped away again). ``images`` (B, 3, H, W) -> (B, C, H, W)."""
    batch, _, height, width = images.shape
    window_h, window_w = window
    stride_h, stride_w = stride
    if stride_h <= 0 or stride_w <= 0:
        raise ValueError(f"sliding window stride must be positive, got {tuple(stride)}")
    pad_h, pad_w = max(window_h - height, 0), max(window_w - width, 0)
    padded = F.pad(images, (0, pad_w, 0, pad_h))
    full_h, full_w = padded.shape[-2:]
    rows = max(-(-(full_h - window_h) // stride_h), 0) + 1
    cols = max(-(-(full_w - window_w) // stride_w), 0) + 1
    total = images.new_zeros((batch, num_classes, full_h, full_w))
    counts = images.new_zeros((1, 1, full_h, full_w))
    for row in range(rows):
        for col in range(cols):
            top = min(row * stride_h, full_h - window_h)
            left = min(col * stride_w, full_w - window_w)
            crop = padded[:, :, top : top + window_h, left : left + window_w]
            total[:, :, top : top + window_h, left : left + window_w] += logits_fn(crop)
            counts[:, :, top : top + window_h, left : left + window_w] += 1
    return (total / counts)[:, :, :height, :width]


@torch.no_grad()
def predict_probabilities(
    logits_fn: LogitsFn,
    images: torch.Tensor,
    num_classes: int,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    mode: str = "whole",
    window: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
) -> torch.Tensor:
    """Sum of softmax probabilities over scales (and flips), at the input size: (B, C, H, W)."""
    if mode not in ("whole", "slide"):
        raise ValueError(f"unknown inference mode '{mode}' (valid: whole, slide)")
    if mode == "slide" and window is None:
        raise ValueError("sliding-window inference needs a window size (eval.crop_size)")
    height, width = images.shape[-2:]
    if mode == "slide":
        stride = stride or [max(1, 2 * size // 3) for size in window]

    def run(batch: torch.Tensor) -> torch.Tensor:
        if mode == "slide":
            return sliding_window_logits(logits_fn, batch, num_classes, window, stride)
        return logits_fn(batch)

    total = images.new_zeros((images.shape[0], num_classes, height, width))
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = (
            images
            if size == (height, width)
            else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        )
        views = [scaled, scaled.flip(-1)] if flip else [scaled]
        for index, view in enumerate(views):
            logits = run(view).float()
            if index == 1:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            total += logits.softmax(dim=1)
    return total
