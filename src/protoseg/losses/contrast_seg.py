"""ContrastiveSeg's training objective: ``L = ce_weight * CE + contrast_weight * L_contrast`` (Eq. 4)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..prototypes.pixel_queue import PixelQueue
from .anchor_sampling import HardAnchorSampler, RandomAnchorSampler
from .pixel_contrast import PixelContrastLoss
from .segmentation import upsampled_cross_entropy

SAMPLERS = {"hard": HardAnchorSampler, "random": RandomAnchorSampler}


class ContrastSegLoss(nn.Module):
    """Criterion of the contrast head: ``forward(outputs, target (B, H, W), iteration=0)``.

    Returns ``"loss"`` and the detached terms ``"ce"`` (0 when ``ce_weight`` = 0: not computed, for
    use beside ProtoSegLoss which has its own CE) and ``"contrast"`` (0 before ``warmup_iters``, when
    it is not computed at all, and in eval mode without ``"embeddings"``).

    Anchors are sampled with the predictions ``outputs["logits"].argmax(1)`` (detached). When
    ``outputs`` holds ``"memory"`` (a :class:`PixelQueue`), the anchors are contrasted with it, and
    ``outputs["embeddings"]`` are enqueued with the target AFTER the loss, at every training step,
    warm-up included, so the memory is full when the contrast starts.

    The sampling randomness comes from an internal ``torch.Generator`` seeded with ``seed + rank``;
    its state is not saved in checkpoints, so a resumed run draws different anchors than an
    uninterrupted one would (the model and queues resume exactly).
    """

    def __init__(
        self,
        contrast_weight: float = 0.1,
        warmup_iters: int = 5000,
        ce_weight: float = 1.0,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        max_samples: int = 1024,
        max_views: int = 100,
        ignore_index: int = 255,
        seed: int = 0,
        memory_temperature: float = 0.07,
        sampling: str = "hard",
    ) -> None:
        super().__init__()
        if sampling not in SAMPLERS:
            raise ValueError(f"ContrastSegLoss sampling must be one of {sorted(SAMPLERS)}, got '{sampling}'")
        if warmup_iters < 0:
            raise ValueError(f"ContrastSegLoss warmup_iters must be >= 0, got {warmup_iters}")
        self.contrast_weight = contrast_weight
        self.warmup_iters = warmup_iters
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index
        self.seed = seed
        self.contrast = PixelContrastLoss(
            temperature=temperature,
            base_temperature=base_temperature,
            ignore_index=ignore_index,
            sampler=SAMPLERS[sampling](max_samples, max_views, ignore_index),
            memory_temperature=memory_temperature,
        )
        self._generator: torch.Generator | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        """The sampling generator on ``device``, created (seeded with ``seed + rank``) on first use."""
        if self._generator is None or self._generator.device != device:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed + rank)
        return self._generator

    def forward(
        self, outputs: dict[str, torch.Tensor | PixelQueue], target: torch.Tensor, iteration: int = 0
    ) -> dict[str, torch.Tensor]:
        logits = outputs["logits"]
        zero = logits.sum() * 0.0
        ce = upsampled_cross_entropy(logits, target, self.ignore_index) if self.ce_weight != 0 else zero
        embeddings = outputs.get("embeddings")
        memory = outputs.get("memory")
        contrast = zero
        if embeddings is not None:
            generator = self.generator(embeddings.device)
            if iteration >= self.warmup_iters and self.contrast_weight != 0:
                predictions = logits.detach().argmax(dim=1)
                contrast = self.contrast(
                    embeddings, target, predictions, memory, generator, num_classes=logits.shape[1]
                )
            if memory is not None:
                memory.enqueue(embeddings.detach(), target, generator)
        loss = self.ce_weight * ce + self.contrast_weight * contrast
        return {"loss": loss, "ce": ce.detach(), "contrast": contrast.detach()}
