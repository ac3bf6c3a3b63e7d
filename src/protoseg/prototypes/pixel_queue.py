"""Pixel and segment memory of ContrastiveSeg (Wang et al., ICCV 2021, Sec. 3.4), vectorised.

Per class, a pixel queue and a segment queue (ring buffers of ``size`` L2-normalised embeddings).
Each enqueue writes, for every image and every class present in it, the class-mean embedding of the
image (segment queue) and up to ``pixels_per_image`` random pixels OF THAT CLASS (pixel queue).
Unlike the released code: pixels come from their class only, pointers advance by the number of items
written, class 0 is enqueued like any other, labels are resized to the embedding grid, and under
``torch.distributed`` every rank gathers every rank's items and writes them identically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.distributed import gather_from_all_ranks
from ..ops.grouping import code_groups, order_by_code_at_random
from ..ops.labels import resize_labels

# Interleaved accumulators per (image, channel, class) for the segment sums.
_SUM_LANES = 8


class PixelQueue(nn.Module):
    """Per-class pixel and segment queues, kept as buffers (saved in checkpoints).

    Buffers: ``pixel_queue`` / ``segment_queue`` (C, size, D); ``pixel_pointer`` / ``segment_pointer``
    (C,) next slot to write; ``pixel_filled`` / ``segment_filled`` (C,) number of filled slots (the
    filled slots are always ``[0, filled)`` because writing starts at slot 0 and wraps).
    """

    def __init__(self, num_classes: int, dim: int, size: int = 5000, pixels_per_image: int = 10) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("dim", dim), ("size", size)):
            if value < 1:
                raise ValueError(f"PixelQueue {name} must be >= 1, got {value}")
        if pixels_per_image < 0:
            raise ValueError(f"PixelQueue pixels_per_image must be >= 0, got {pixels_per_image}")
        self.num_classes = num_classes
        self.dim = dim
        self.size = size
        self.pixels_per_image = pixels_per_image
        self.register_buffer("pixel_queue", torch.zeros(num_classes, size, dim))
        self.register_buffer("segment_queue", torch.zeros(num_classes, size, dim))
        self.register_buffer("pixel_pointer", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("segment_pointer", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("pixel_filled", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("segment_filled", torch.zeros(num_classes, dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, size={self.size}, "
            f"pixels_per_image={self.pixels_per_image}"
        )

    @torch.no_grad()
    def enqueue(
        self, embeddings: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> None:
        """Write ``embeddings`` (B, D, H, W) of the pixels labelled by ``labels`` (B, H', W') (255 ignore).

        Labels are resized to (H, W) by nearest neighbour. Under DDP the fixed-shape candidates of all
        ranks are gathered first (every rank must call this with the same batch size).
        """
        if embeddings.dim() != 4 or embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (B, {self.dim}, H, W), got shape {tuple(embeddings.shape)}")
        if labels.dim() != 3 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"labels shape {tuple(labels.shape)} does not match embeddings shape "
                f"{tuple(embeddings.shape)}"
            )
        candidates = self._candidates(embeddings.detach(), labels, generator)
        segments, segment_valid, pixels, pixel_valid = candidates
        segments = gather_from_all_ranks(segments)
        segment_valid = gather_from_all_ranks(segment_valid.to(torch.uint8)).bool()
        pixels = gather_from_all_ranks(pixels)
        pixel_valid = gather_from_all_ranks(pixel_valid.to(torch.uint8)).bool()

        classes, dim = self.num_classes, self.dim
        _ring_write(
            self.segment_queue, self.segment_pointer, self.segment_filled,
            segments.transpose(0, 1), segment_valid.transpose(0, 1),
        )  # fmt: skip
        if self.pixels_per_image > 0:
            _ring_write(
                self.pixel_queue, self.pixel_pointer, self.pixel_filled,
                pixels.transpose(0, 1).reshape(classes, -1, dim),
                pixel_valid.transpose(0, 1).reshape(classes, -1),
            )  # fmt: skip

    def _candidates(
        self, embeddings: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fixed-shape items of this rank.

        Returns ``segments`` (B, C, D) normalised class means, ``segment_valid`` (B, C),
        ``pixels`` (B, C, P, D) normalised random pixels of each class, ``pixel_valid`` (B, C, P).
        """
        batch, dim, height, width = embeddings.shape
        classes, per_image = self.num_classes, self.pixels_per_image
        pixels_per_map = height * width
        device = embeddings.device
        flat_labels = resize_labels(labels, (height, width)).view(batch, pixels_per_map)
        # channels-first (B, D, HW): indexed directly, never transposed into a full copy
        channels_first = embeddings.flatten(2).to(self.segment_queue.dtype)
        known = (flat_labels >= 0) & (flat_labels < classes)

        # Segment items: sum and count per (image, class); column ``classes`` collects ignored pixels.
        # Pixel p adds into lane p % LANES of its class: neighbouring pixels (often of the same class)
        # then update different accumulators instead of waiting on one (about 2.5x faster on CPU).
        column = flat_labels.masked_fill(~known, classes)
        lane = torch.arange(pixels_per_map, device=device) % _SUM_LANES
        lane_column = (column * _SUM_LANES + lane).unsqueeze(1).expand(batch, dim, pixels_per_map)
        sums = channels_first.new_zeros(batch, dim, (classes + 1) * _SUM_LANES)
        sums = sums.scatter_add_(2, lane_column, channels_first).view(batch, dim, classes + 1, _SUM_LANES)
        counts, starts = code_groups(column, classes + 1)
        segments = F.normalize(sums[:, :, :classes].sum(dim=3).transpose(1, 2), dim=2)
        segment_valid = counts[:, :classes] > 0

        # Pixel items: the pixels of each image grouped by class in random order; the first P of each
        # class (all when it has fewer) are taken.
        item = order_by_code_at_random(column, classes + 1, generator)
        class_start = starts[:, :classes]
        rank = torch.arange(per_image, device=device)
        pixel_valid = rank < counts[:, :classes].unsqueeze(2)
        position = (class_start.unsqueeze(2) + rank).clamp(max=pixels_per_map - 1)
        pixel_of_item = item.gather(1, position.view(batch, classes * per_image)) % pixels_per_map
        # one gather per image row (better locality than indexing (image, :, pixel))
        index = pixel_of_item.unsqueeze(1).expand(batch, dim, classes * per_image)
        pixels = F.normalize(channels_first.gather(2, index).transpose(1, 2), dim=2)
        return segments, segment_valid, pixels.reshape(batch, classes, per_image, dim), pixel_valid

    def contrast_banks(self, snapshot: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(segment_queue, segment_valid), (pixel_queue, pixel_valid)]``: queues (C, size, D) with
        their filled-slot masks (C, size), for :func:`protoseg.losses.pixel_contrast.memory_contrast`.

        With ``snapshot`` the queues are cloned: autograd saves them to compute the anchors' gradient,
        and the criterion enqueues (in place) before ``backward`` runs, which would otherwise raise
        (or, without the version check, use the new contents).
        """
        slot = torch.arange(self.size, device=self.pixel_queue.device)
        segment_queue, pixel_queue = self.segment_queue.detach(), self.pixel_queue.detach()
        if snapshot:
            segment_queue, pixel_queue = segment_queue.clone(), pixel_queue.clone()
        return [
            (segment_queue, slot < self.segment_filled.unsqueeze(1)),
            (pixel_queue, slot < self.pixel_filled.unsqueeze(1)),
        ]

    def contrast_entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All queue rows for contrast: ``rows`` (C * 2 * size, D) (segment queue then pixel queue per
        class), ``labels`` (C * 2 * size,) class of each row, ``valid`` (C * 2 * size,) filled slots."""
        classes, size = self.num_classes, self.size
        rows = torch.cat([self.segment_queue, self.pixel_queue], dim=1).view(classes * 2 * size, self.dim)
        device = rows.device
        labels = torch.arange(classes, device=device).repeat_interleave(2 * size)
        slot = torch.arange(size, device=device)
        valid = torch.cat(
            [slot < self.segment_filled.unsqueeze(1), slot < self.pixel_filled.unsqueeze(1)], dim=1
        )
        return rows.detach(), labels, valid.view(-1)


def _ring_write(
    queue: torch.Tensor, pointer: torch.Tensor, filled: torch.Tensor, items: torch.Tensor, valid: torch.Tensor
) -> None:
    """Append the valid ``items`` (C, N, D) of each class, in order, to the ring buffers ``queue`` (C, S, D).

    The pointer of class c advances by the number of its valid items, modulo S. When more than S
    items arrive, only the last S are kept (the earlier ones would be overwritten anyway).
    """
    classes, size, dim = queue.shape
    valid_count = valid.long()
    total = valid_count.sum(dim=1)
    offset = valid_count.cumsum(dim=1) - valid_count
    keep = valid & (offset >= (total - size).unsqueeze(1))
    new_pointer = (pointer + total) % size
    position = (pointer.unsqueeze(1) + offset) % size

    # Items that are not kept still need a write position (fixed shapes): they all go to slot
    # new_pointer of their class carrying the value that slot holds after this write, so the
    # duplicate writes agree and the result does not depend on the write order.
    first_kept = keep.long().argmax(dim=1)
    first_kept_item = items.gather(1, first_kept.view(classes, 1, 1).expand(classes, 1, dim)).squeeze(1)
    current = queue.gather(1, new_pointer.view(classes, 1, 1).expand(classes, 1, dim)).squeeze(1)
    settled = torch.where((total >= size).unsqueeze(1), first_kept_item.to(queue.dtype), current)
    position = torch.where(keep, position, new_pointer.unsqueeze(1))
    values = torch.where(keep.unsqueeze(2), items.to(queue.dtype), settled.unsqueeze(1))
    flat_index = (torch.arange(classes, device=queue.device).unsqueeze(1) * size + position).flatten()
    queue.view(classes * size, dim).index_copy_(0, flat_index, values.reshape(-1, dim))
    pointer.copy_(new_pointer)
    filled.copy_(torch.clamp(filled + total, max=size))
