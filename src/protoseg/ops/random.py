"""Seeded random streams of the methods' own draws (anchor sampling, memory writes, mixup)."""

from __future__ import annotations

import torch
import torch.distributed as dist


class SeededGenerator:
    """A ``torch.Generator`` seeded with ``seed + rank`` on first use on a device (each DDP rank draws its
    own stream; a method's random choices are reproducible from ``train.seed``). Its state is not saved
    in checkpoints: a resumed run draws other samples than an uninterrupted one."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._generator: torch.Generator | None = None

    def __call__(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed + rank)
        return self._generator
