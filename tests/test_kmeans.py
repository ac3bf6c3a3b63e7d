import random

import pytest
import torch

from protoseg.ops import kmeans


def squared(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).sum())


def brute_force_lloyd(
    points: list[torch.Tensor], centroids: list[torch.Tensor], iters: int
) -> list[torch.Tensor]:
    """Plain float64 Lloyd iterations (no empty cluster here); loops over points and clusters."""
    centroids = [c.clone() for c in centroids]
    for _ in range(iters):
        groups: list[list[torch.Tensor]] = [[] for _ in centroids]
        for point in points:
            distances = [squared(point, c) for c in centroids]
            groups[distances.index(min(distances))].append(point)
        for j, group in enumerate(groups):
            assert group, "reference expects no empty cluster"
            centroids[j] = torch.stack(group).mean(dim=0)
    return centroids


def objective(points: list[torch.Tensor], centroids: list[torch.Tensor]) -> float:
    return sum(min(squared(p, c) for c in centroids) for p in points)


def best_of_restarts(points: list[torch.Tensor], k: int, restarts: int, seed: int) -> float:
    """Best objective of ``restarts`` random-init Lloyd runs (init = k distinct data points), pure Python."""
    rows = [p.tolist() for p in points]

    def distance(a: list[float], b: list[float]) -> float:
        return sum((u - v) ** 2 for u, v in zip(a, b))

    rng = random.Random(seed)
    best = float("inf")
    for _ in range(restarts):
        centroids = [rows[i] for i in rng.sample(range(len(rows)), k)]
        for _ in range(30):
            groups: list[list[list[float]]] = [[] for _ in centroids]
            for row in rows:
                distances = [distance(row, c) for c in centroids]
                groups[distances.index(min(distances))].append(row)
            centroids = [
                [sum(col) / len(g) for col in zip(*g)] if g else c for g, c in zip(groups, centroids)
            ]
        best = min(best, sum(min(distance(row, c) for c in centroids) for row in rows))
    return best


def blobs(classes: int, k: int, per_blob: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, k, dim, generator=generator, dtype=torch.float64) * 20
    noise = torch.randn(classes, k, per_blob, dim, generator=generator, dtype=torch.float64)
    points = (centres.unsqueeze(2) + noise).reshape(classes, k * per_blob, dim)
    order = torch.randperm(k * per_blob, generator=generator)
    return points[:, order]


def test_lloyd_iterations_match_brute_force():
    x = torch.randn(3, 40, 4, dtype=torch.float64)
    init = x[:, :5].clone()
    for iters in (1, 4):
        centroids = kmeans(x, 5, iters=iters, init=init)
        for c in range(3):
            expected = brute_force_lloyd(list(x[c]), list(init[c]), iters)
            torch.testing.assert_close(centroids[c], torch.stack(expected))


def test_objective_matches_best_of_ten_restarts_on_separated_blobs():
    x = blobs(classes=3, k=4, per_blob=15, dim=5, seed=1)
    generator = torch.Generator().manual_seed(0)
    centroids, assignments = kmeans(x, 4, iters=20, generator=generator, return_assignments=True)
    for c in range(3):
        points = list(x[c])
        ours = objective(points, list(centroids[c]))
        best = best_of_restarts(points, 4, restarts=10, seed=c)
        assert ours <= best * (1 + 1e-6) + 1e-9, (c, ours, best)
        # the returned assignments are the nearest final centroids
        for m, point in enumerate(points):
            distances = [squared(point, q) for q in centroids[c]]
            assert int(assignments[c, m]) == distances.index(min(distances))


def test_valid_mask_ignores_invalid_points_and_empty_classes_get_zeros():
    x = blobs(classes=3, k=3, per_blob=10, dim=3, seed=2)
    valid = torch.ones(3, 30, dtype=torch.bool)
    valid[0, 20:] = False
    valid[2] = False
    x[0, 20:] = 1e6  # huge outliers that would capture a centroid if they counted
    generator = torch.Generator().manual_seed(3)
    centroids, assignments = kmeans(x, 3, iters=15, generator=generator, valid=valid, return_assignments=True)
    assert torch.all(centroids[2] == 0)
    assert torch.all(assignments[~valid] == -1)
    assert centroids[0].abs().max() < 1e3
    for c in range(2):
        points = [x[c, m] for m in range(30) if valid[c, m]]
        best = best_of_restarts(points, 3, restarts=10, seed=c)
        assert objective(points, list(centroids[c])) <= best * (1 + 1e-6) + 1e-9


def test_empty_cluster_is_reseeded_to_the_farthest_point():
    x = torch.tensor([[[0.0], [1.0], [2.0], [10.0], [11.0], [30.0]]], dtype=torch.float64)
    init = torch.tensor([[[1.0], [10.0], [1000.0]]], dtype=torch.float64)
    centroids = kmeans(x, 3, iters=1, init=init)
    # after assignment, cluster 2 is empty; the farthest point from its own centroid is 30 (cost 400)
    points = [float(v) for v in x[0, :, 0]]
    assigned = [min(range(2), key=lambda j, p=p: (p - float(init[0, j, 0])) ** 2) for p in points]
    costs = [(p - float(init[0, a, 0])) ** 2 for p, a in zip(points, assigned)]
    farthest = points[costs.index(max(costs))]
    means = [sum(p for p, a in zip(points, assigned) if a == j) / assigned.count(j) for j in range(2)]
    expected = torch.tensor([[[means[0]], [means[1]], [farthest]]], dtype=torch.float64)
    torch.testing.assert_close(centroids, expected)


def test_fewer_valid_points_than_clusters_gives_no_nan():
    x = torch.randn(2, 6, 3)
    valid = torch.zeros(2, 6, dtype=torch.bool)
    valid[0, :2] = True
    valid[1] = True
    centroids = kmeans(x, 4, iters=5, generator=torch.Generator().manual_seed(0), valid=valid)
    assert torch.isfinite(centroids).all()
    # every centroid of class 0 is one of its two valid points (or their mean)
    candidates = torch.stack([x[0, 0], x[0, 1], x[0, :2].mean(0)])
    distance = torch.cdist(centroids[0], candidates).min(dim=1).values
    assert torch.all(distance < 1e-5)


def test_seeded_runs_are_identical_and_seeds_matter():
    x = torch.randn(4, 50, 6)
    first = kmeans(x, 5, iters=3, generator=torch.Generator().manual_seed(7))
    second = kmeans(x, 5, iters=3, generator=torch.Generator().manual_seed(7))
    other = kmeans(x, 5, iters=0, generator=torch.Generator().manual_seed(8))
    same_seed_no_iters = kmeans(x, 5, iters=0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(other, same_seed_no_iters)


def test_bad_arguments_raise():
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="k=6"):
        kmeans(x, 6)
    with pytest.raises(ValueError, match="valid"):
        kmeans(x, 2, valid=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="init"):
        kmeans(x, 2, init=torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="shape"):
        kmeans(torch.randn(5, 3), 2)
