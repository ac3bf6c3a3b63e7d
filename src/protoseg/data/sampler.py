"""Seeded, resumable, rank-sharded sampling.

``SeededSampler`` yields ``(dataset_index, sample_seed)`` pairs forever. The dataset builds a
``torch.Generator`` from ``sample_seed`` for the sample's augmentation, so the batches depend only
on ``seed`` (not on the number of DataLoader workers), and ``start_index`` continues a stopped
run's exact stream.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for the sample at ``position`` of epoch ``epoch``'s permutation."""
    mixed = _splitmix64(seed & _MASK64)
    mixed = _splitmix64(mixed ^ (epoch & _MASK64))
    mixed = _splitmix64(mixed ^ (position & _MASK64))
    return mixed & ((1 << 63) - 1)


class SeededSampler(Sampler):
    """Infinite ``(dataset_index, sample_seed)`` stream of one rank.

    Epoch ``e`` orders the dataset by ``torch.randperm(length)`` seeded with ``seed + e``
    (``arange`` without shuffling), truncated to a multiple of ``world_size``; rank ``r`` takes
    positions ``r, r + world_size, ...``. ``start_index`` skips that many items of this rank's
    stream (resume: ``iteration * per_rank_batch_size``).
    """

    def __init__(
        self,
        length: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start_index: int = 0,
    ) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if length < world_size:
            raise ValueError(f"dataset length {length} is smaller than world_size {world_size}")
        if start_index < 0:
            raise ValueError(f"start_index must be >= 0, got {start_index}")
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.start_index = start_index
        self.per_rank = length // world_size

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The epoch's global order (int64, length truncated to a multiple of world_size)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.length, generator=generator)
        else:
            order = torch.arange(self.length)
        return order[: self.per_rank * self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start_index, self.per_rank)
        while True:
            order = self.epoch_order(epoch).tolist()
            for position in range(self.rank + offset * self.world_size, len(order), self.world_size):
                yield order[position], sample_seed(self.seed, epoch, position)
            epoch, offset = epoch + 1, 0


class ShardedEvalIndices(Sampler):
    """Dataset positions ``rank, rank + world_size, ...`` (no padding, no duplicates) for evaluation."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))
