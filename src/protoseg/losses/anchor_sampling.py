"""Anchor sampling of ContrastiveSeg (Wang et al., ICCV 2021, Sec. 3.3), vectorised with fixed shapes.

Per image and per class present (ignore excluded) with more than ``max_views`` pixels, the sampler
draws ``n_view = min(max_samples // n_anchor_classes, max_views)`` pixels, where ``n_anchor_classes``
counts the qualifying (image, class) pairs of the batch. The hard sampler takes half "hard" pixels
(ground truth c, prediction != c) and half "easy" ones (ground truth c, prediction c), topping up
from the other set when one is short; the random sampler draws uniformly within the class.

``n_view`` depends on the data, so it never becomes a shape: every (image, class) slot has
``max_views`` views and a validity mask keeps the first ``n_view``. The selection is computed for all
images and classes at once with one random permutation and one stable sort per image (groups of
pixels by (class, hard/easy), random order inside each group), then ranks inside each group; no
Python loop over images or classes and no device -> host synchronisation. Samplers return indices
(:meth:`AnchorSampler.sample_indices`); :func:`pack_anchor_indices` compacts the valid views into
``max_samples`` rows so that the pairwise contrast costs ``max_samples^2``, not ``(A * V)^2``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# Sort key of ignored pixels: larger than the key (2 * class + is_easy) of any real class.
_IGNORED_KEY = 2**62


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
        ignore_index: int = 255,
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
    is_easy = torch.zeros_like(ignored) if easy is None else easy & ~ignored
    keys = (labels * 2 + is_easy.long()).masked_fill(ignored, _IGNORED_KEY)

    # Random order first, then a stable sort by key: groups by (class, hard/easy), hard first,
    # random order inside each group.
    random_order = torch.rand(batch, pixels, generator=generator, device=device).argsort(dim=1)
    sorted_keys, order = keys.gather(1, random_order).sort(dim=1, stable=True)
    pixel_of_position = random_order.gather(1, order)
    sorted_labels = torch.div(sorted_keys, 2, rounding_mode="floor")

    class_start = torch.searchsorted(sorted_keys, sorted_labels * 2, side="left")
    easy_start = torch.searchsorted(sorted_keys, sorted_labels * 2 + 1, side="left")
    class_end = torch.searchsorted(sorted_keys, sorted_labels * 2 + 1, side="right")
    position = torch.arange(pixels, device=device).expand(batch, pixels)
    num_hard = easy_start - class_start
    num_easy = class_end - easy_start

    qualifies = (sorted_keys != _IGNORED_KEY) & (class_end - class_start > views)
    is_group_start = qualifies & (position == class_start)
    n_anchor_classes = is_group_start.sum()
    per_class = torch.div(sampler.max_samples, n_anchor_classes.clamp_min(1), rounding_mode="floor")
    n_view = per_class.clamp(max=views)

    # Half hard, half easy; a short set is taken whole and the other tops it up (released rule).
    hard_keep = torch.minimum(num_hard, torch.maximum(n_view // 2, n_view - num_easy))
    easy_keep = n_view - hard_keep
    in_hard = position < easy_start
    rank = torch.where(in_hard, position - class_start, position - easy_start)
    selected = qualifies & torch.where(in_hard, rank < hard_keep, rank < easy_keep)
    view = torch.where(in_hard, rank, hard_keep + rank)

    group_rank = is_group_start.long().cumsum(dim=1).gather(1, class_start) - 1
    selected = selected & (group_rank < slots)
    slot = torch.arange(batch, device=device).unsqueeze(1) * slots + group_rank

    dump = total_slots * views
    target = torch.where(selected, slot * views + view, dump).flatten()
    flat_pixel = (torch.arange(batch, device=device).unsqueeze(1) * pixels + pixel_of_position).flatten()
    pixel_index = torch.zeros(dump + 1, dtype=torch.long, device=device).scatter_(0, target, flat_pixel)
    valid = torch.zeros(dump + 1, dtype=torch.bool, device=device).scatter_(0, target, selected.flatten())

    slot_target = torch.where(is_group_start & (group_rank < slots), slot, total_slots).flatten()
    slot_labels = torch.full((total_slots + 1,), sampler.ignore_index, dtype=torch.long, device=device)
    slot_labels.scatter_(0, slot_target, sorted_labels.flatten())
    return AnchorIndices(
        pixel_index=pixel_index[:dump].view(total_slots, views) * valid[:dump].view(total_slots, views),
        labels=slot_labels[:total_slots],
        valid=valid[:dump].view(total_slots, views),
    )


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
