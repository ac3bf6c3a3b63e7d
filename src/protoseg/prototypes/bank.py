"""ProtoSeg's non-learnable class prototypes: within-class online clustering and momentum update.

Implements the within-class online clustering (Eq. 8-10) and the prototype momentum update of
"Rethinking Semantic Segmentation: A Prototype View" (Zhou et al., CVPR 2022) for all classes
at once: no Python loop over classes, no host synchronisation, a cost that does not grow with
the number of classes C (besides O(C * K * D) for the bank itself).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.distributed import all_reduce_sum_, world_size
from ..ops.sinkhorn import segmented_sinkhorn

__all__ = ["PrototypeBank", "PrototypeAssignment", "IGNORED_ASSIGNMENT", "own_segment_products"]

ASSIGNMENTS = ("argmax", "gumbel")
CLUSTERINGS = ("sinkhorn", "nearest")
INITIALIZATIONS = ("random", "data")
IGNORED_ASSIGNMENT = -1
"""Prototype index given to pixels whose label is ignored (outside ``[0, C)``)."""


class PrototypeAssignment(NamedTuple):
    """Per-pixel prototype indices in ``[0, K)``, -1 for ignored pixels, both ``(N,)`` int64.

    ``target``: ``argmax_k Q[n, k]``, the index of the PPC / PPD targets ``c * K + k``.
    ``update``: the index used for the momentum update: ``target`` with ``assignment="argmax"``,
    the Gumbel-softmax draw with ``assignment="gumbel"`` (the released code updates with the
    Gumbel one-hot but builds its targets from the argmax).
    """

    target: torch.Tensor
    update: torch.Tensor


def own_segment_products(
    rows: torch.Tensor, segment_ids: torch.Tensor, weights: torch.Tensor, group_size: int = 64
) -> torch.Tensor:
    """``out[n] = weights[segment_ids[n]] @ rows[n]``: rows ``(N, D)``, weights ``(S, K, D)`` -> ``(N, K)``.

    A grouped matrix product with fixed shapes (no host sync, no loop over segments): rows are
    ranked within their segment (one sort), each segment is cut into groups of ``group_size``
    rows, and the rows are scattered into a padded ``(G, group_size, D)`` block, G =
    ceil(N / group_size) + S (an upper bound on the number of groups). One ``bmm`` with each
    group's ``(K, D)`` weights then does ``G * group_size * K * D`` multiply-adds, i.e. the
    O(N * K * D) of the useful products plus at most ``S * group_size`` padding rows, instead
    of the O(N * S * K * D) of multiplying every row by every segment's weights and gathering.

    ``segment_ids`` must lie in ``[0, S)``.
    """
    num_rows, num_segments = rows.shape[0], weights.shape[0]
    sorted_ids, order = torch.sort(segment_ids)
    rows_per_segment = torch.zeros(num_segments, dtype=torch.long, device=rows.device)
    rows_per_segment.index_add_(0, segment_ids, torch.ones_like(segment_ids))
    segment_start = torch.cumsum(rows_per_segment, 0) - rows_per_segment
    positions = torch.arange(num_rows, device=rows.device)
    rank_in_sorted = positions - segment_start.index_select(0, sorted_ids)
    rank = torch.empty_like(segment_ids).index_copy_(0, order, rank_in_sorted)
    groups_per_segment = (rows_per_segment + group_size - 1) // group_size
    group_end = torch.cumsum(groups_per_segment, 0)
    num_groups = (num_rows + group_size - 1) // group_size + num_segments
    group = (group_end - groups_per_segment).index_select(0, segment_ids) + rank // group_size
    slot = group * group_size + rank % group_size
    # Padding slots stay uninitialised: their products are never read back.
    padded = rows.new_empty(num_groups * group_size, rows.shape[1]).index_copy_(0, slot, rows)
    all_groups = torch.arange(num_groups, device=rows.device)
    group_segment = torch.searchsorted(group_end, all_groups, right=True).clamp_max(num_segments - 1)
    group_weights = weights.index_select(0, group_segment).transpose(1, 2)
    products = torch.bmm(padded.view(num_groups, group_size, -1), group_weights)
    return products.reshape(num_groups * group_size, -1).index_select(0, slot)


class PrototypeBank(nn.Module):
    """C x K unit-norm prototypes of dimension D, kept as a buffer ``prototypes`` ``(C, K, D)``.

    Args:
        num_classes: C.
        num_prototypes: K prototypes per class.
        dim: D, the embedding dimension.
        momentum: gamma of the update ``p <- normalize(gamma p + (1 - gamma) m)``.
        sinkhorn_epsilon, sinkhorn_iters: the within-class Sinkhorn-Knopp clustering.
        clustering: ``"sinkhorn"`` (the paper: equipartitioned plan, Eq. 8-10) or ``"nearest"``
            (an ablation: the plan without its column constraint, ``Q = softmax_k(S / eps)`` per
            pixel, so each pixel goes to its nearest own-class prototype, however many pixels
            that prototype already has).
        assignment: ``"argmax"`` (protoseg default: update with ``argmax_k Q``) or ``"gumbel"``
            (the released code: update with ``gumbel_softmax(Q, tau=0.5, hard=True)``,
            Q treated as logits).
        generator: ``torch.Generator`` for the initialisation and the Gumbel draws (global RNG
            when None); best on the bank's device (otherwise the draws are copied there).
        init: ``"random"`` (the paper and release: truncated normal, std 0.02, L2-normalised; the
            prototypes then only move through the momentum update) or ``"data"``: the first update
            of each prototype sets it to the normalised mean of ALL the pixels of its class that the
            clustering assigned to it (correct or not), after which the momentum rule applies as
            usual. The buffer ``initialized`` ``(C, K)`` (only with ``"data"``) records which
            prototypes have had that first update; it is saved with the model.
    """

    prototypes: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        num_prototypes: int,
        dim: int,
        momentum: float = 0.999,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iters: int = 3,
        assignment: str = "argmax",
        generator: torch.Generator | None = None,
        init: str = "random",
        clustering: str = "sinkhorn",
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("num_prototypes", num_prototypes), ("dim", dim)):
            if value < 1:
                raise ValueError(f"PrototypeBank {name} must be >= 1, got {value}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"PrototypeBank momentum must be in [0, 1], got {momentum}")
        if assignment not in ASSIGNMENTS:
            raise ValueError(f"PrototypeBank assignment must be one of {ASSIGNMENTS}, got '{assignment}'")
        if clustering not in CLUSTERINGS:
            raise ValueError(f"PrototypeBank clustering must be one of {CLUSTERINGS}, got '{clustering}'")
        if init not in INITIALIZATIONS:
            raise ValueError(f"PrototypeBank init must be one of {INITIALIZATIONS}, got '{init}'")
        if not sinkhorn_epsilon > 0:
            raise ValueError(f"PrototypeBank sinkhorn_epsilon must be > 0, got {sinkhorn_epsilon}")
        if sinkhorn_iters < 1:
            raise ValueError(f"PrototypeBank sinkhorn_iters must be >= 1, got {sinkhorn_iters}")
        self.num_classes = num_classes
        self.num_prototypes = num_prototypes
        self.dim = dim
        self.momentum = momentum
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iters = sinkhorn_iters
        self.assignment = assignment
        self.clustering = clustering
        self.generator = generator
        self.init = init
        initial = torch.empty(num_classes, num_prototypes, dim)
        nn.init.trunc_normal_(initial, std=0.02, generator=generator)
        self.register_buffer("prototypes", F.normalize(initial, dim=-1))
        if init == "data":
            self.register_buffer("initialized", torch.zeros(num_classes, num_prototypes, dtype=torch.bool))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_prototypes={self.num_prototypes}, dim={self.dim}, "
            f"momentum={self.momentum}, assignment={self.assignment}, clustering={self.clustering}, "
            f"init={self.init}"
        )

    def similarities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``s[n, c, k] = <x_n, p_{c,k}>`` for ``embeddings`` ``(N, D)`` -> ``(N, C, K)`` (one matmul)."""
        flat = self.prototypes.reshape(-1, self.dim).to(embeddings.dtype)
        return (embeddings @ flat.t()).view(-1, self.num_classes, self.num_prototypes)

    def valid_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Boolean ``(N,)``: labels inside ``[0, C)`` (everything else, e.g. 255, is ignored)."""
        return (labels >= 0) & (labels < self.num_classes)

    def own_class_similarities(
        self, embeddings: torch.Tensor, labels: torch.Tensor, group_size: int = 64
    ) -> torch.Tensor:
        """``s[n, k] = <x_n, p_{label_n, k}>`` ``(N, K)`` in O((N + C * group_size) * K * D) work.

        Ignored pixels are computed against class 0 (their values are meaningless and masked
        downstream). See :func:`own_segment_products` for the method.
        """
        classes = torch.where(self.valid_labels(labels), labels, torch.zeros_like(labels))
        return own_segment_products(embeddings, classes, self.prototypes.to(embeddings.dtype), group_size)

    @torch.no_grad()
    def cluster(
        self, embeddings: torch.Tensor, labels: torch.Tensor, similarities: torch.Tensor | None = None
    ) -> PrototypeAssignment:
        """Within-class online clustering (segmented Sinkhorn) of the pixels of every class at once.

        For the pixels X_c of each class c and their similarities S_c ``(N_c, K)`` to the class's
        own prototypes, computes ``Q_c = diag(u) exp(S_c / eps) diag(v)`` (rows sum to 1, columns
        ~ N_c / K; see :func:`protoseg.ops.segmented_sinkhorn`) and assigns ``argmax_k Q_c``. With
        ``clustering="nearest"``, ``Q_c = softmax_k(S_c / eps)`` (rows only), i.e. the nearest prototype.

        Args:
            embeddings: ``(N, D)`` L2-normalised pixel embeddings.
            labels: ``(N,)`` int64 class of each pixel; values outside ``[0, C)`` are ignored.
            similarities: optional precomputed ``(N, C, K)`` (e.g. the head's forward); the
                own-class slice is then gathered for free. Otherwise computed in O(N * K * D).

        Returns:
            :class:`PrototypeAssignment` with ``target`` and ``update`` indices ``(N,)``
            (``IGNORED_ASSIGNMENT`` = -1 on ignored pixels).
        """
        valid = self.valid_labels(labels)
        if similarities is not None:
            expected = (labels.shape[0], self.num_classes, self.num_prototypes)
            if tuple(similarities.shape) != expected:
                raise ValueError(f"similarities must have shape {expected}, got {tuple(similarities.shape)}")
        # float32 even under autocast: exp(1 / eps) overflows half precision.
        with torch.autocast(device_type=labels.device.type, enabled=False):
            if similarities is None:
                own = self.own_class_similarities(embeddings.float(), labels)
            else:
                classes = torch.where(valid, labels, torch.zeros_like(labels))
                index = classes.view(-1, 1, 1).expand(-1, 1, self.num_prototypes)
                own = similarities.gather(1, index).squeeze(1)
            if self.clustering == "sinkhorn":
                q = segmented_sinkhorn(
                    own, labels, self.num_classes, self.sinkhorn_epsilon, self.sinkhorn_iters, mask=valid
                )
            else:
                q = torch.softmax(own / self.sinkhorn_epsilon, dim=1)
        ignored = torch.full_like(labels, IGNORED_ASSIGNMENT)
        target = torch.where(valid, q.argmax(dim=1), ignored)
        if self.assignment == "argmax":
            return PrototypeAssignment(target, target)
        # Same draw as F.gumbel_softmax(q, tau=0.5, hard=True) (which takes no generator): the
        # hard sample is argmax((q + g) / tau) = argmax(q + g), g = -log(Exponential(1)).
        gumbels = -self._standard_exponential(q).log()
        update = torch.where(valid, (q + gumbels).argmax(dim=1), ignored)
        return PrototypeAssignment(target, update)

    def _standard_exponential(self, like: torch.Tensor) -> torch.Tensor:
        """Exponential(1) draws shaped like ``like``, from ``self.generator`` (global RNG when None).

        A generator on another device than ``like`` (e.g. a CPU generator for a CUDA bank) draws
        on its own device and the draws are copied over.
        """
        if self.generator is None or self.generator.device == like.device:
            return torch.empty_like(like).exponential_(generator=self.generator)
        draws = torch.empty(like.shape, dtype=like.dtype, device=self.generator.device)
        return draws.exponential_(generator=self.generator).to(like.device)

    def assign(
        self, embeddings: torch.Tensor, labels: torch.Tensor, similarities: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Prototype index ``(N,)`` int64 used for the update (-1 on ignored pixels); see :meth:`cluster`."""
        return self.cluster(embeddings, labels, similarities).update

    @torch.no_grad()
    def update(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        assignments: torch.Tensor,
        correct_mask: torch.Tensor,
    ) -> None:
        """Momentum update of every prototype that received a correctly predicted pixel.

        For each (c, k) with at least one pixel n with ``labels[n] = c``, ``assignments[n] = k``
        and ``correct_mask[n]``: ``m = normalize(sum of those x_n)``,
        ``p_{c,k} <- normalize(gamma p_{c,k} + (1 - gamma) m)``; the others stay unchanged.
        With ``init="data"``, a prototype not yet initialised takes ``p_{c,k} <- m`` instead, m over
        all its assigned pixels of class c (``correct_mask`` is not required for it).
        Under ``torch.distributed`` (world size > 1) the per-(c, k) sums and counts are
        all-reduced first, so every rank applies the same update (that of the global batch).

        Args:
            embeddings: ``(N, D)`` pixel embeddings (L2-normalised).
            labels: ``(N,)`` int64; labels outside ``[0, C)`` never contribute.
            assignments: ``(N,)`` int64 prototype indices (from :meth:`assign`); outside
                ``[0, K)`` never contributes.
            correct_mask: ``(N,)`` bool, pixels whose predicted class equals the label.
        """
        num_slots = self.num_classes * self.num_prototypes
        assigned = self.valid_labels(labels) & (assignments >= 0) & (assignments < self.num_prototypes)
        slots = labels * self.num_prototypes + assignments
        pending = None
        if self.init == "data":
            pending = ~self.initialized.reshape(num_slots)
            # a pending prototype takes all its pixels; the rest only the correctly predicted ones
            takes_all = pending.index_select(0, torch.where(assigned, slots, torch.zeros_like(slots)))
            contributes = assigned & (correct_mask.bool() | takes_all)
        else:
            contributes = assigned & correct_mask.bool()
        # Non-contributing pixels go to an extra dump slot: no masking multiply, so even
        # non-finite embeddings at ignored pixels cannot leak into the sums.
        slots = torch.where(contributes, slots, num_slots)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            embeddings = embeddings.float()
            sums = torch.zeros(num_slots + 1, self.dim, dtype=torch.float32, device=embeddings.device)
            sums.index_add_(0, slots, embeddings)
            counts = torch.zeros(num_slots + 1, dtype=torch.float32, device=embeddings.device)
            counts.index_add_(0, slots, torch.ones_like(embeddings[:, 0]))
            sums, counts = sums[:num_slots], counts[:num_slots]
            if world_size() > 1:
                statistics = all_reduce_sum_(torch.cat([sums, counts.unsqueeze(1)], dim=1))
                sums, counts = statistics[:, : self.dim], statistics[:, self.dim]
            old = self.prototypes.reshape(num_slots, self.dim).float()
            mean_direction = F.normalize(sums, dim=1)
            moved = F.normalize(self.momentum * old + (1.0 - self.momentum) * mean_direction, dim=1)
            received = counts > 0
            if pending is not None:
                moved = torch.where(pending.unsqueeze(1), mean_direction, moved)
                self.initialized.logical_or_(received.view_as(self.initialized))
            new = torch.where(received.unsqueeze(1), moved, old)
            self.prototypes.copy_(new.view_as(self.prototypes))
