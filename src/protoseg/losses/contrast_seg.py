"""ContrastiveSeg's training objective: ``L = ce_weight * CE + contrast_weight * L_contrast`` (Eq. 4)."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.labels import IGNORE_INDEX
from ..ops.random import SeededGenerator
from ..prototypes.pixel_queue import PixelQueue
from .anchor_sampling import HardAnchorSampler, RandomAnchorSampler
from .pixel_contrast import PixelContrastLoss
from .segmentation import class_weight_buffer, upsampled_cross_entropy

SAMPLERS = {"hard": HardAnchorSampler, "random": RandomAnchorSampler}


class ContrastSegLoss(nn.Module):
    """Criterion of the contrast head: ``forward(outputs, target (B, H, W), iteration=0, memory=None,
    generator=None)``.

    Returns ``"loss"`` and the detached terms ``"ce"`` (0 when ``ce_weight`` = 0: not computed, for
    use beside ProtoSegLoss which has its own CE) and ``"contrast"`` (0 before ``start_iter``, when
    it is not computed at all, and without ``"embeddings"`` in ``outputs``, e.g. in eval mode).

    Anchors are sampled with the predictions ``outputs["logits"].argmax(1)`` (detached) and drawn
    with ``generator`` (default: an internal generator seeded with ``seed + rank``). With ``memory``
    (a :class:`PixelQueue`) the anchors are contrasted with its contents; the loss never writes to
    the memory (the method enqueues after the step). ``class_weights``: optional per-class CE weights.
    """

    def __init__(
        self,
        contrast_weight: float = 0.1,
        start_iter: int = 5000,
        ce_weight: float = 1.0,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        max_samples: int = 1024,
        max_views: int = 100,
        ignore_index: int = IGNORE_INDEX,
        seed: int = 0,
        memory_temperature: float = 0.07,
        sampling: str = "hard",
        class_weights=None,
    ) -> None:
        super().__init__()
        class_weight_buffer(self, class_weights)
        if sampling not in SAMPLERS:
            raise ValueError(f"ContrastSegLoss sampling must be one of {sorted(SAMPLERS)}, got '{sampling}'")
        if start_iter < 0:
            raise ValueError(f"ContrastSegLoss start_iter must be >= 0, got {start_iter}")
        self.contrast_weight = contrast_weight
        self.start_iter = start_iter
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index
        self.contrast = PixelContrastLoss(
            temperature=temperature,
            base_temperature=base_temperature,
            ignore_index=ignore_index,
            sampler=SAMPLERS[sampling](max_samples, max_views, ignore_index),
            memory_temperature=memory_temperature,
        )
        self.generator = SeededGenerator(seed)

    def forward(
        self,
        outputs: dict[str, torch.Tensor],
        target: torch.Tensor,
        iteration: int = 0,
        memory: PixelQueue | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        logits = outputs["logits"]
        zero = logits.sum() * 0.0
        ce = (
            upsampled_cross_entropy(logits, target, self.ignore_index, self.class_weights)
            if self.ce_weight != 0
            else zero
        )
        embeddings = outputs.get("embeddings")
        contrast = zero
        if embeddings is not None and iteration >= self.start_iter and self.contrast_weight != 0:
            predictions = logits.detach().argmax(dim=1)
            contrast = self.contrast(
                embeddings,
                target,
                predictions,
                memory,
                generator or self.generator(embeddings.device),
                num_classes=logits.shape[1],
            )
        loss = self.ce_weight * ce + self.contrast_weight * contrast
        return {"loss": loss, "ce": ce.detach(), "contrast": contrast.detach()}
