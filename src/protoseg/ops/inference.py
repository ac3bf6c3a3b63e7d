"""Test-time inference: whole-image or sliding-window, multi-scale and horizontal flip.

All functions take a ``logits_fn(images (B, 3, h, w)) -> (B, C, h, w)`` (logits at input size,
e.g. :meth:`Segmentor.predict`) and return class probabilities summed over the augmentations.
:class:`InferenceSettings` holds one choice of scales, flip and window, checked when it is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
INFERENCE_MODES = ("whole", "slide")
TTA_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
"""The scales of test-time augmentation (``--tta``, ``Model.predict(tta=True)``), each with its flip."""


@dataclass(frozen=True)
class InferenceSettings:
    """Test-time augmentation and tiling of :func:`predict_probabilities`.

    Args:
        scales: image scales (each > 0) whose probabilities are summed; ``(1.0,)``: single scale.
        flip: also run every scale horizontally flipped.
        mode: ``"whole"`` (the image at once) or ``"slide"`` (overlapping ``window`` crops).
        window: ``(height, width)`` of the sliding window (required for ``"slide"``).
        stride: ``(height, width)`` step of the window; default 2/3 of the window.

    Raises ``ValueError`` naming the bad value.
    """

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    mode: str = "whole"
    window: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(scale) for scale in self.scales))
        if not self.scales:
            raise ValueError("inference scales must not be empty (single scale: [1.0])")
        for scale in self.scales:
            if not (math.isfinite(scale) and scale > 0):
                raise ValueError(f"inference scale {scale} must be a finite number > 0")
        if self.mode not in INFERENCE_MODES:
            raise ValueError(f"unknown inference mode '{self.mode}' (valid: {', '.join(INFERENCE_MODES)})")
        for name in ("window", "stride"):
            value = getattr(self, name)
            if value is None:
                continue
            value = tuple(int(side) for side in value)
            if len(value) != 2 or min(value) < 1:
                raise ValueError(f"sliding-window {name} must be two sizes >= 1 (height, width), got {value}")
            object.__setattr__(self, name, value)
        if self.mode == "slide" and self.window is None:
            raise ValueError("sliding-window inference needs a window size (eval.crop_size)")

    @classmethod
    def from_config(cls, eval_cfg, default_window: Sequence[int] | None = None) -> InferenceSettings:
        """The settings of an ``eval`` config section (``scales``, ``flip``, ``mode``, ``crop_size``,
        ``stride``); the window defaults to ``default_window`` (the training crop)."""
        window = eval_cfg.crop_size or default_window
        return cls(
            scales=tuple(eval_cfg.scales),
            flip=eval_cfg.flip,
            mode=eval_cfg.mode,
            window=tuple(window) if window is not None else None,
            stride=tuple(eval_cfg.stride) if eval_cfg.stride is not None else None,
        )


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
    settings: InferenceSettings | None = None,
    **options,
) -> torch.Tensor:
    """Sum of softmax probabilities over scales (and flips), at the input size: (B, C, H, W).

    ``settings`` (or the keyword ``options`` of :class:`InferenceSettings`) choose the augmentations.
    """
    if settings is None:
        settings = InferenceSettings(**options)
    elif options:
        raise ValueError(f"give either settings or options, not both: {sorted(options)}")
    height, width = images.shape[-2:]
    window, stride = settings.window, settings.stride
    if settings.mode == "slide":
        stride = stride or tuple(max(1, 2 * size // 3) for size in window)

    def run(batch: torch.Tensor) -> torch.Tensor:
        if settings.mode == "slide":
            return sliding_window_logits(logits_fn, batch, num_classes, window, stride)
        return logits_fn(batch)

    total = images.new_zeros((images.shape[0], num_classes, height, width))
    for scale in settings.scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = (
            images
            if size == (height, width)
            else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        )
        views = [scaled, scaled.flip(-1)] if settings.flip else [scaled]
        for index, view in enumerate(views):
            logits = run(view).float()
            if index == 1:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            total += logits.softmax(dim=1)
    return total
