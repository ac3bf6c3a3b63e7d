"""Batched k-means (Lloyd) with k-means++ seeding, one independent problem per class (for RCA).

Everything runs on the input's device and is vectorised over the leading "class" axis: one call
clusters the memories of all classes at once. Randomness comes only from ``generator``.
"""

from __future__ import annotations

import math

import torch


def _squared_norms(vectors: torch.Tensor) -> torch.Tensor:
    """``(..., D)`` -> ``(..., 1)`` squared L2 norms."""
    return (vectors * vectors).sum(-1, keepdim=True)


def _squared_distances(
    points: torch.Tensor, point_norms: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """``(C, M, D)`` (with their ``(C, M, 1)`` squared norms) x ``(C, K, D)`` -> ``(C, M, K)``."""
    cross = torch.bmm(points, centroids.transpose(1, 2))
    return (point_norms - 2 * cross + _squared_norms(centroids).transpose(1, 2)).clamp_min(0)


def _gather_rows(points: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``points (C, M, D)``, ``indices (C, T)`` -> ``(C, T, D)``."""
    return torch.gather(points, 1, indices.unsqueeze(-1).expand(-1, -1, points.shape[-1]))


def _kmeans_plus_plus(
    points: torch.Tensor,
    point_norms: torch.Tensor,
    k: int,
    valid: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; ``2 + log k`` trials per step, as sklearn).

    Each new centroid is drawn with probability proportional to the squared distance to the nearest
    centroid chosen so far (valid points only); of the ``trials`` candidates the one that lowers the
    potential most is kept. Returns ``(C, K, D)``.
    """
    classes = points.shape[0]
    class_index = torch.arange(classes, device=points.device)
    valid_weights = valid.to(points.dtype)
    has_valid = valid.any(dim=1, keepdim=True)
    # a class without any valid point draws uniformly (its centroids are zeroed by the caller)
    uniform = torch.where(has_valid, valid_weights, torch.ones_like(valid_weights))
    first = torch.multinomial(uniform, 1, generator=generator)
    centroids = [_gather_rows(points, first)[:, 0]]
    closest = _squared_distances(points, point_norms, centroids[0].unsqueeze(1)).squeeze(-1)
    trials = 2 + int(math.log(k))
    for _ in range(1, k):
        weights = closest * valid_weights
        # all valid points already coincide with a centroid (fewer distinct points than k): draw uniformly
        weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, uniform)
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator)
        candidate_points = _gather_rows(points, candidates)
        candidate_distances = _squared_distances(points, point_norms, candidate_points)
        candidate_closest = torch.minimum(closest.unsqueeze(-1), candidate_distances)
        potential = (candidate_closest * valid_weights.unsqueeze(-1)).sum(dim=1)
        best = potential.argmin(dim=1)
        centroids.append(candidate_points[class_index, best])
        closest = candidate_closest[class_index, :, best]
    return torch.stack(centroids, dim=1)


def _lloyd_step(
    points: torch.Tensor, point_norms: torch.Tensor, centroids: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """One Lloyd iteration: assign valid points to the nearest centroid, move centroids to the means.

    A cluster left empty is re-seeded to a far point: the empty clusters of a class take, in order,
    the valid points with the largest distance to their assigned centroid (the farthest first), as
    sklearn does. When a class has fewer valid points than empty clusters, the rest keep their centroid.
    """
    k = centroids.shape[1]
    distances = _squared_distances(points, point_norms, centroids)
    assignments = distances.argmin(dim=-1)
    members = (assignments.unsqueeze(-1) == torch.arange(k, device=points.device)) & valid.unsqueeze(-1)
    members = members.to(points.dtype)
    counts = members.sum(dim=1)
    means = torch.bmm(members.transpose(1, 2), points) / counts.clamp_min(1).unsqueeze(-1)

    point_costs = distances.gather(-1, assignments.unsqueeze(-1)).squeeze(-1).masked_fill(~valid, -1.0)
    farthest_costs, farthest_index = point_costs.topk(k, dim=1)
    empty = counts == 0
    empty_rank = (empty.long().cumsum(dim=1) - 1).clamp_min(0)
    reseed_points = _gather_rows(points, farthest_index.gather(1, empty_rank))
    reseed_found = (farthest_costs.gather(1, empty_rank) >= 0).unsqueeze(-1)
    reseeded = torch.where(reseed_found, reseed_points, centroids)
    return torch.where(empty.unsqueeze(-1), reseeded, means)


def kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 30,
    generator: torch.Generator | None = None,
    valid: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    return_assignments: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Batched k-means: cluster ``x[c]`` into ``k`` groups for every class ``c`` at once.

    Minimises ``sum_c sum_{valid m} min_j ||x[c, m] - centroid[c, j]||^2`` with k-means++ seeding
    followed by ``iters`` Lloyd iterations (a fixed count: no host synchronisation for a convergence
    test). Used by RCA's semantic aggregation to summarise each class's region memory into K
    prototypes ("K class centroids").

    Args:
        x: ``(C, M, D)`` points, ``C`` independent problems.
        k: clusters per problem, ``1 <= k <= M``.
        iters: Lloyd iterations after seeding.
        generator: RNG for the k-means++ draws (on ``x``'s device); the global RNG when None.
        valid: optional ``(C, M)`` bool mask of the points to cluster (a partially filled memory);
            invalid points are ignored. A class without any valid point gets zero centroids.
        init: optional ``(C, K, D)`` initial centroids instead of k-means++.
        return_assignments: also return the ``(C, M)`` int64 index of each point's nearest final
            centroid (-1 for invalid points).

    Returns:
        centroids ``(C, K, D)`` in ``x``'s dtype (and the assignments when asked).
    """
    if x.dim() != 3:
        raise ValueError(f"kmeans: x must be (C, M, D), got shape {tuple(x.shape)}")
    classes, size, _ = x.shape
    if not 1 <= k <= size:
        raise ValueError(f"kmeans: k must be in [1, M={size}], got k={k}")
    if iters < 0:
        raise ValueError(f"kmeans: iters must be >= 0, got {iters}")
    if valid is None:
        valid = torch.ones(classes, size, dtype=torch.bool, device=x.device)
    elif valid.shape != (classes, size):
        raise ValueError(f"kmeans: valid must have shape {(classes, size)}, got {tuple(valid.shape)}")
    valid = valid.to(device=x.device, dtype=torch.bool)
    if init is not None and init.shape != (classes, k, x.shape[2]):
        raise ValueError(f"kmeans: init must have shape {(classes, k, x.shape[2])}, got {tuple(init.shape)}")

    points = x if x.dtype in (torch.float32, torch.float64) else x.float()
    point_norms = _squared_norms(points)
    if init is None:
        centroids = _kmeans_plus_plus(points, point_norms, k, valid, generator)
    else:
        centroids = init.to(points)
    for _ in range(iters):
        centroids = _lloyd_step(points, point_norms, centroids, valid)
    centroids = centroids * valid.any(dim=1).to(points.dtype)[:, None, None]
    centroids = centroids.to(x.dtype)
    if not return_assignments:
        return centroids
    assignments = _squared_distances(points, point_norms, centroids.to(points.dtype)).argmin(dim=-1)
    return centroids, assignments.masked_fill(~valid, -1)
