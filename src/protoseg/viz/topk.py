"""A running top-k with payloads in fixed-size tensors: one pass over a dataset, bounded memory."""

from __future__ import annotations

import torch


class StreamingTopK:
    """The ``k`` largest scores of each of ``num_rows`` rows seen so far, each with its payloads.

    State: ``scores`` float32 ``(rows, k)``, sorted descending, ``-inf`` marking an empty slot, and
    one tensor ``(rows, k, width)`` per payload (any dtype), created by the first :meth:`update`.
    Every update merges the new candidates with one ``topk``; memory stays ``O(rows * k)`` however
    many candidates are streamed through (a reservoir sample when the scores are random keys).
    """

    def __init__(self, num_rows: int, k: int, device: torch.device | str = "cpu") -> None:
        if k < 1:
            raise ValueError(f"top-k needs k >= 1, got {k}")
        if num_rows < 1:
            raise ValueError(f"top-k needs num_rows >= 1, got {num_rows}")
        self.k = k
        self.scores = torch.full((num_rows, k), -torch.inf, device=device)
        self.payloads: list[torch.Tensor] = []

    @property
    def valid(self) -> torch.Tensor:
        """Boolean ``(rows, k)``: slots holding a candidate."""
        return torch.isfinite(self.scores)

    def update(self, scores: torch.Tensor, *payloads: torch.Tensor) -> None:
        """Merge ``M`` candidates per row.

        Args:
            scores: ``(rows, M)``; ``-inf`` = not a candidate of that row.
            payloads: each ``(rows, M, width)`` (per row) or ``(M, width)`` (shared by all rows, never
                expanded to ``(rows, M, width)``); the same payloads, in the same order, at every update.
        """
        rows, k = self.scores.shape
        if scores.dim() != 2 or scores.shape[0] != rows:
            raise ValueError(f"scores must be ({rows}, M), got shape {tuple(scores.shape)}")
        if self.payloads and len(payloads) != len(self.payloads):
            raise ValueError(f"expected {len(self.payloads)} payloads, got {len(payloads)}")
        if scores.shape[1] == 0:
            return
        merged = torch.cat([self.scores, scores.float()], dim=1)
        top, order = merged.topk(k, dim=1)
        from_kept = (order < k).unsqueeze(-1)
        kept_order = order.clamp(max=k - 1).unsqueeze(-1)
        new_order = (order - k).clamp(min=0)
        for position, new in enumerate(payloads):
            width = new.shape[-1]
            if len(self.payloads) <= position:
                self.payloads.append(new.new_zeros((rows, k, width)))
            kept = self.payloads[position].gather(1, kept_order.expand(-1, -1, width))
            if new.dim() == 2:
                fresh = new[new_order]
            else:
                fresh = new.gather(1, new_order.unsqueeze(-1).expand(-1, -1, width))
            self.payloads[position] = torch.where(from_kept, kept, fresh)
        self.scores = top
