"""Several criteria trained together (e.g. ProtoSeg + pixel contrast): their total and their terms."""

from __future__ import annotations

import torch
from torch import nn


class SumOfCriteria(nn.Module):
    """``forward(outputs, target, iteration)``: ``loss`` = sum of the criteria's losses; terms merged.

    A term reported by several criteria (e.g. ``ce`` when only one of them trains CE) keeps the
    first non-zero-weighted criterion's value: criteria are listed in order of precedence.
    """

    def __init__(self, *criteria: nn.Module) -> None:
        super().__init__()
        if not criteria:
            raise ValueError("SumOfCriteria needs at least one criterion")
        self.criteria = nn.ModuleList(criteria)

    def forward(
        self, outputs: dict[str, torch.Tensor], target: torch.Tensor, iteration: int = 0
    ) -> dict[str, torch.Tensor]:
        merged: dict[str, torch.Tensor] = {}
        total = None
        for criterion in self.criteria:
            terms = criterion(outputs, target, iteration)
            total = terms["loss"] if total is None else total + terms["loss"]
            for key, value in terms.items():
                if key != "loss":
                    merged.setdefault(key, value)
        merged["loss"] = total
        return merged
