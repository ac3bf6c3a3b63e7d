"""Grouping items by an integer code without host synchronisation: random order within each code."""

from __future__ import annotations

import torch

RANDOM_KEY_BITS = 31
"""Random bits below the (image, code) part of a sort key: with 2^-31 tie odds the order within a
group is uniform."""


def order_by_code_at_random(
    codes: torch.Tensor, code_limit: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Order the N items of each row of ``codes`` (B, N) by code, uniformly at random within a code.

    ``codes`` are int64 in ``[0, code_limit)``. Returns ``item`` (B, N): row b lists the flat indices
    (into the B * N items) of row b's items, codes ascending, so the items of code k in row b are
    ``item[b, start : start + count]`` with ``start`` the number of items of row b with a smaller code.
    One 1-D sort of the int64 keys ``(image, code, 31 random bits)`` (a radix sort on CPU) replaces a
    random permutation followed by a stable sort by code; equal keys (odds 2^-31 per pair) keep their
    index order.
    """
    batch, count = codes.shape
    if batch * code_limit > 2 ** (63 - RANDOM_KEY_BITS):
        raise ValueError(
            f"order_by_code_at_random: batch {batch} x code_limit {code_limit} "
            f"exceeds 2^{63 - RANDOM_KEY_BITS}"
        )
    device = codes.device
    random_bits = torch.randint(0, 2**RANDOM_KEY_BITS, (batch, count), generator=generator, device=device)
    image_offset = torch.arange(batch, device=device).unsqueeze(1) * code_limit
    keys = ((image_offset + codes) << RANDOM_KEY_BITS) | random_bits
    return keys.flatten().sort(stable=True).indices.view(batch, count)


def code_groups(codes: torch.Tensor, code_limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``codes`` (B, N) (int64 in ``[0, code_limit)``): ``count`` (B, code_limit), the items
    of each code, and ``start`` (B, code_limit), the items of smaller codes: where each code's group
    begins in the row order of :func:`order_by_code_at_random`."""
    count = torch.zeros(codes.shape[0], code_limit, dtype=torch.long, device=codes.device)
    count.scatter_add_(1, codes, torch.ones_like(codes))
    return count, count.cumsum(dim=1) - count
