"""RCA's pseudo-region memory bank: one ring buffer of region embeddings per class."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.distributed import gather_from_all_ranks


class RegionMemory(nn.Module):
    """Per-class memory of region embeddings, stored as ONE ``(C, M, D)`` buffer.

    Buffers (saved in checkpoints):

    - ``memory`` ``(C, M, D)``: slot ``memory[c, j]`` only ever receives class-``c`` regions;
      unfilled slots are zero;
    - ``pointer`` ``(C,)`` int64: the next slot to write for each class (a ring);
    - ``count`` ``(C,)`` int64: filled slots per class (``<= M``). Because every class writes its
      ring from slot 0 onwards, slot ``j`` of class ``c`` is filled iff ``j < count[c]`` (``valid``).

    Update (RCA memory update, as in the authors' release): a region of class ``c`` goes to slot
    ``pointer[c]``; ``m <- momentum * m + (1 - momentum) * f`` when the slot is already filled,
    ``m <- f`` on its first write (the release instead blends into a random initialisation);
    the pointer then advances by one, wrapping at ``M``.
    """

    memory: torch.Tensor
    pointer: torch.Tensor
    count: torch.Tensor

    def __init__(self, num_classes: int, dim: int, size: int = 500, momentum: float = 0.99) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1 or size < 1:
            raise ValueError(
                f"RegionMemory: num_classes, dim and size must be >= 1, got {num_classes}, {dim}, {size}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"RegionMemory: momentum must be in [0, 1), got {momentum}")
        self.num_classes = num_classes
        self.dim = dim
        self.size = size
        self.momentum = momentum
        self.register_buffer("memory", torch.zeros(num_classes, size, dim))
        self.register_buffer("pointer", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @property
    def valid(self) -> torch.Tensor:
        """``(C, M)`` bool: which slots hold an embedding."""
        slots = torch.arange(self.size, device=self.count.device)
        return slots.unsqueeze(0) < self.count.unsqueeze(1)

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the memory."""
        self.memory.zero_()
        self.pointer.zero_()
        self.count.zero_()

    @torch.no_grad()
    def enqueue(
        self,
        region_embeddings: torch.Tensor,
        labels: torch.Tensor,
        scores: torch.Tensor,
        threshold: float,
        valid: torch.Tensor | None = None,
    ) -> None:
        """Write the regions whose score exceeds ``threshold`` into their class's ring.

        Args:
            region_embeddings: ``(R, D)`` region embeddings (detached here).
            labels: ``(R,)`` int64 class of each region, in ``[0, C)``.
            scores: ``(R,)`` classification score of each region's class (RCA: sigmoid of the
                image-level logit); a region is written iff ``score > threshold``.
            threshold: score threshold (0.7 in the release).
            valid: optional ``(R,)`` bool; False regions (absent class, empty mask) are never written.

        Regions are written in row order (on several DDP ranks: rank 0's rows first, the tensors
        being all-gathered so that every rank writes the same thing). When one call brings more
        than ``M`` regions of a class, only its last ``M`` are written (each slot at most once).
        Vectorised: ranks within each class by a cumulative sum, one scatter into the flat buffer,
        no host synchronisation.
        """
        rows = region_embeddings.shape[0]
        if region_embeddings.dim() != 2 or region_embeddings.shape[1] != self.dim:
            raise ValueError(
                f"RegionMemory.enqueue: region_embeddings must be (R, {self.dim}), "
                f"got {tuple(region_embeddings.shape)}"
            )
        if labels.shape != (rows,) or scores.shape != (rows,):
            raise ValueError(
                f"RegionMemory.enqueue: labels {tuple(labels.shape)} and scores {tuple(scores.shape)} "
                f"must be ({rows},)"
            )
        if valid is not None and valid.shape != (rows,):
            raise ValueError(f"RegionMemory.enqueue: valid must be ({rows},), got {tuple(valid.shape)}")

        scores = scores.detach().float()
        if valid is not None:
            scores = scores.masked_fill(~valid.bool(), float("-inf"))
        embeddings = gather_from_all_ranks(region_embeddings.detach().to(self.memory.dtype))
        labels = gather_from_all_ranks(labels.long())
        scores = gather_from_all_ranks(scores)

        write = scores > threshold
        classes = torch.arange(self.num_classes, device=labels.device)
        class_membership = ((labels.unsqueeze(1) == classes.unsqueeze(0)) & write.unsqueeze(1)).long()
        arriving_per_class = class_membership.sum(dim=0)
        rank_in_class = class_membership.cumsum(dim=0).gather(1, labels.unsqueeze(1)).squeeze(1) - 1
        # ring semantics as if written one by one: region number r of class c goes to slot
        # pointer[c] + r; of more than M arrivals only the last M survive, so keep just those
        write = write & (rank_in_class >= arriving_per_class[labels] - self.size)
        slot = (self.pointer[labels] + rank_in_class) % self.size
        flat_index = labels * self.size + slot

        flat_memory = self.memory.view(-1, self.dim)
        current = flat_memory.index_select(0, flat_index)
        already_filled = (slot < self.count[labels]).unsqueeze(1)
        blended = self.momentum * current + (1.0 - self.momentum) * embeddings
        target = torch.where(already_filled, blended, embeddings)
        # rows not written add an exact zero, so colliding indices never change a slot; an unfilled
        # slot is exactly zero, so 0 + (f - 0) stores f exactly
        delta = (target - current) * write.unsqueeze(1).to(current.dtype)
        flat_memory.index_put_((flat_index,), delta, accumulate=True)
        self.pointer.copy_((self.pointer + arriving_per_class) % self.size)
        self.count.copy_((self.count + arriving_per_class).clamp_max(self.size))
