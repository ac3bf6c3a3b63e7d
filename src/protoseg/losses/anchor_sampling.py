"""Anchor sampling of ContrastiveSeg (Wang et al., ICCV 2021, Sec. 3.3), vectorised with fixed shapes.

Per image and per class present (ignore excluded) with more than ``max_views`` pixels, the sampler
draws ``n_view = min(max_samples // n_anchor_classes, max_views)`` pixels, where ``n_anchor_classes``
counts the qualifying (image, class) pairs of the batch. The hard sampler takes half "hard" pixels
(ground truth c, prediction != c) and half "easy" ones (ground truth c, prediction c), topping up
from the other set when one is short; the random sampler draws uniformly within the class.

``n_view`` depends on the data, so it never becomes a shape: every (image, class) slot has
``max_views`` views and a validity mask keeps the first ``n_view``. The selection is computed for all
images and classes at once with one sort of random keys (pixels grouped by image and
(class, hard/easy), random order inside each group) and per-group pixel counts, which locate every
view of every slot in the sorted order; no Python loop over images or classes and no device -> host
synchronisation. Samplers return indices
(:meth:`AnchorSampler.sample_indices`); :func:`pack_anchor_indices` compacts the valid views into
``max_samples`` rows so that the pairwise contrast costs ``max_samples^2``, not ``(A * V)^2``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..ops.grouping import code_groups, order_by_code_at_random
from ..ops.labels import IGNORE_INDEX


class AnchorIndices(NamedTuple):
    """Sampled anchors as indices, fixed shapes.

    ``pixel_index`` (A, V) int64: flat index into the B * HW pixels of the batch (0 where invalid);
    ``labels`` (A,) int64: class of each (image, class) slot (``ignore_index`` for unused slots);
    ``valid`` (A, V) bool: which views are sampled anchors.
    """

    pixel_index: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor


class AnchorSampler:
    """Base class of the swappable anchor samplers.

    Subclasses implement :meth:`sample_indices`; ``__call__`` gathers the embeddings. At most
    ``max_samples`` views are valid in a batch (``n_anchor_classes * n_view <= max_samples``), which is
    the ``capacity`` :func:`pack_anchor_indices` compacts them into.
    """

    def __init__(
        self,
        max_samples: int = 1024,
        max_views: int = 100,
        ignore_index: int = IGNORE_INDEX,
        num_classes: int | None = None,
    ) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        if max_views < 1:
            raise ValueError(f"max_views must be >= 1, got {max_views}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.max_samples = max_samples
        self.max_views = max_views
        self.ignore_index = ignore_index
        self.num_classes = num_classes

    @property
    def capacity(self) -> int:
        """Upper bound on the number of valid views in one batch."""
        return self.max_samples

    def sample_indices(
        self,
        labels: torch.Tensor,
        predictions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_classes: int | None = None,
    ) -> AnchorIndices:
        """Choose anchors from ``labels`` (B, HW) (and ``predictions`` (B, HW)); see the module doc."""
        raise NotImplementedError

    def __call__(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        predictions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_classes: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample anchors from ``embeddings`` (B, D, H, W) or (B, HW, D) with ``labels`` (B, HW).

        Returns ``anchors`` (A, V, D) (zeros where invalid), ``anchor_labels`` (A,) and ``valid`` (A, V),
        with A = B * slots per image and V = ``max_views``.
        """
        no_pixel = torch.zeros(0, dtype=torch.long, device=labels.device)
        gather_pixels(embeddings, labels, no_pixel)  # checks the shapes before sampling
        indices = self.sample_indices(labels, predictions, generator, num_classes)
        anchors = gather_pixels(embeddings, labels, indices.pixel_index) * indices.valid.unsqueeze(-1)
        return anchors, indices.labels, indices.valid


class HardAnchorSampler(AnchorSampler):
    """Half hard (gt = c, pred != c), half easy (gt = c, pred = c) anchors per (image, class).

    Without ``predictions`` it samples uniformly within each class, like :class:`RandomAnchorSampler`.
    """

    def sample_indices(
        self,
        labels: torch.Tensor,
        predictions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_classes: int | None = None,
    ) -> AnchorIndices:
        if predictions is not None and predictions.shape != labels.shape:
            raise ValueError(
                f"predictions shape {tuple(predictions.shape)} differs from labels shape "
                f"{tuple(labels.shape)}"
            )
        easy = None if predictions is None else predictions == labels
        return _sample_anchor_indices(self, labels, easy, generator, num_classes)


class RandomAnchorSampler(AnchorSampler):
    """``n_view`` uniformly random anchors per (image, class); predictions are ignored."""

    def sample_indices(
        self,
        labels: torch.Tensor,
        predictions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_classes: int | None = None,
    ) -> AnchorIndices:
        return _sample_anchor_indices(self, labels, None, generator, num_classes)


def gather_pixels(embeddings: torch.Tensor, labels: torch.Tensor, pixel_index: torch.Tensor) -> torch.Tensor:
    """Rows of ``embeddings`` (B, D, H, W) or (B, HW, D) at flat ``pixel_index`` (any shape) into B * HW.

    ``labels`` (B, HW) fixes B and HW. Returns ``(*pixel_index.shape, D)``. Indexes the channels-first
    layout directly, so neither the forward nor the backward copies the whole (B, D, HW) map.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be (B, HW), got shape {tuple(labels.shape)}")
    batch, pixels = labels.shape
    image = torch.div(pixel_index, pixels, rounding_mode="floor").flatten()
    pixel = (pixel_index % pixels).flatten()
    if embeddings.dim() == 4 and embeddings.shape[0] == batch and embeddings.shape[2:].numel() == pixels:
        rows = embeddings.flatten(2)[image, :, pixel]
    elif embeddings.dim() == 3 and embeddings.shape[:2] == labels.shape:
        rows = embeddings[image, pixel]
    else:
        raise ValueError(
            f"embeddings shape {tuple(embeddings.shape)} does not match labels shape {tuple(labels.shape)}: "
            "expected (B, D, H, W) with H * W = HW or (B, HW, D)"
        )
    return rows.view(*pixel_index.shape, rows.shape[-1])


def slots_per_image(sampler: AnchorSampler, pixels: int, num_classes: int | None) -> int:
    """How many (image, class) slots one image can fill: each holds > max_views pixels, <= C classes."""
    bound = min(pixels // (sampler.max_views + 1), sampler.max_samples)
    if num_classes is not None:
        bound = min(bound, num_classes)
    return max(1, bound)


def _sample_anchor_indices(
    sampler: AnchorSampler,
    labels: torch.Tensor,
    easy: torch.Tensor | None,
    generator: torch.Generator | None,
    num_classes: int | None,
) -> AnchorIndices:
    """Shared vectorised sampling; ``easy`` (B, HW) bool marks correctly predicted pixels, or None.

    With ``easy = None`` every pixel counts as hard and all ``n_view`` views are drawn from it.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be (B, HW), got shape {tuple(labels.shape)}")
    num_classes = sampler.num_classes if num_classes is None else num_classes
    batch, pixels = labels.shape
    device = labels.device
    views = sampler.max_views
    slots = slots_per_image(sampler, pixels, num_classes)
    total_slots = batch * slots

    labels = labels.long()
    ignored = (labels == sampler.ignore_index) | (labels < 0)
    if num_classes is not None:
        ignored = ignored | (labels >= num_classes)
        class_index, class_count, label_of_class = labels, num_classes, None
    else:
        class_index, label_of_class = _dense_class_index(labels, ignored)
        class_count = pixels
    is_easy = torch.zeros_like(ignored) if easy is None else easy & ~ignored

    # Codes 2 * class + is_easy (ignored pixels last): each sorted row holds, per class, its hard pixels
    # then its easy ones, in random order; group (b, code) starts after the smaller codes of image b.
    ignored_code = 2 * class_count
    codes = (class_index * 2 + is_easy.long()).masked_fill(ignored, ignored_code)
    item = order_by_code_at_random(codes, ignored_code + 1, generator)
    counts, group_start = code_groups(codes, ignored_code + 1)
    num_hard, num_easy = counts[:, 0:ignored_code:2], counts[:, 1:ignored_code:2]  # (B, K)
    hard_start, easy_start = group_start[:, 0:ignored_code:2], group_start[:, 1:ignored_code:2]

    qualifies = num_hard + num_easy > views
    n_anchor_classes = qualifies.sum()
    per_class = torch.div(sampler.max_samples, n_anchor_classes.clamp_min(1), rounding_mode="floor")
    n_view = per_class.clamp(max=views)
    # Half hard, half easy; a short set is taken whole and the other tops it up (released rule).
    hard_keep = torch.minimum(num_hard, torch.maximum(n_view // 2, n_view - num_easy))

    # Slot of a qualifying class: image-major, classes in ascending order.
    rank = qualifies.long().cumsum(dim=1) - 1
    in_slot = qualifies & (rank < slots)
    image = torch.arange(batch, device=device).unsqueeze(1)
    slot_target = torch.where(in_slot, image * slots + rank, total_slots).flatten()
    class_position = torch.arange(batch * class_count, device=device)  # flat (image, class)
    source = torch.zeros(total_slots + 1, dtype=torch.long, device=device)
    source = source.scatter_(0, slot_target, class_position)[:total_slots]
    filled = torch.zeros(total_slots + 1, dtype=torch.bool, device=device)
    filled = filled.scatter_(0, slot_target, in_slot.flatten())[:total_slots]

    # View v of a slot: hard pixel v for v < hard_keep, else easy pixel v - hard_keep.
    view = torch.arange(views, device=device)
    slot_hard_keep = hard_keep.flatten()[source].unsqueeze(1)
    offset = torch.where(
        view < slot_hard_keep,
        hard_start.flatten()[source].unsqueeze(1) + view,
        easy_start.flatten()[source].unsqueeze(1) + view - slot_hard_keep,
    )
    valid = filled.unsqueeze(1) & (view < n_view)
    slot_image = torch.div(source, class_count, rounding_mode="floor").unsqueeze(1)
    sorted_position = torch.where(valid, slot_image * pixels + offset, 0)
    pixel_index = torch.where(valid, item.flatten()[sorted_position], 0)

    slot_class = source % class_count
    if label_of_class is not None:
        slot_class = label_of_class.flatten()[source]
    slot_labels = torch.where(filled, slot_class, sampler.ignore_index)
    return AnchorIndices(pixel_index=pixel_index, labels=slot_labels, valid=valid)


def _dense_class_index(labels: torch.Tensor, ignored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Without a class count: per image, the rank of each pixel's label among the image's labels.

    Returns ``class_index`` (B, HW) in [0, HW) (anything for ignored pixels) and ``label_of_class``
    (B, HW), the label of each rank (meaningful for the ranks in use).
    """
    masked = labels.masked_fill(ignored, torch.iinfo(torch.long).max)
    sorted_labels, order = masked.sort(dim=1)
    is_new = torch.ones_like(ignored)
    is_new[:, 1:] = sorted_labels[:, 1:] != sorted_labels[:, :-1]
    sorted_rank = is_new.long().cumsum(dim=1) - 1
    class_index = torch.empty_like(sorted_rank).scatter_(1, order, sorted_rank)
    # equal ranks carry equal labels, so the repeated writes agree
    label_of_class = torch.zeros_like(sorted_rank).scatter_(1, sorted_rank, sorted_labels)
    return class_index, label_of_class


def pack_anchor_indices(indices: AnchorIndices, capacity: int) -> AnchorIndices:
    """Compact the valid views of ``indices`` into ``capacity`` rows, in slot-major order.

    Returns ``AnchorIndices`` with ``pixel_index`` (capacity,), ``labels`` (capacity,) (per view) and
    ``valid`` (capacity,). Views beyond ``capacity`` are dropped (never happens with ``capacity`` =
    the sampler's ``max_samples``). Keeps the pairwise contrast at capacity^2 instead of (A V)^2.
    """
    views = indices.valid.shape[1]
    flat_valid = indices.valid.flatten()
    position = flat_valid.long().cumsum(0) - 1
    keep = flat_valid & (position < capacity)
    target = torch.where(keep, position, capacity)
    device = flat_valid.device
    pixel_index = torch.zeros(capacity + 1, dtype=torch.long, device=device)
    pixel_index.scatter_(0, target, indices.pixel_index.flatten())
    labels = torch.zeros(capacity + 1, dtype=torch.long, device=device)
    labels.scatter_(0, target, indices.labels.repeat_interleave(views))
    valid = torch.zeros(capacity + 1, dtype=torch.bool, device=device).scatter_(0, target, keep)
    return AnchorIndices(pixel_index[:capacity], labels[:capacity], valid[:capacity])
