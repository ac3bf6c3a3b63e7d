"""Time RCA's components against the memory size: the batched k-means refresh (one call for all
classes), the memory enqueue and the region mixup contrast (forward + backward) of one step.

Usage:
    PYTHONPATH=src python benchmarks/rca_components.py [--device cuda] [--sizes 100 500 2000]
"""

from __future__ import annotations

import argparse

import torch

from protoseg.benchmark.components import filled_region_memory
from protoseg.benchmark.timing import median_seconds
from protoseg.losses import RegionContrastLoss
from protoseg.ops import kmeans

CONVERGED_ITERS = 100


def median_milliseconds(function, device: torch.device, repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls after one warm-up call."""
    return 1000.0 * median_seconds(function, device, warmup=1, repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--prototypes", type=int, default=10)
    parser.add_argument("--kmeans-iters", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8, help="images per step (regions = batch * classes)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)
    regions = args.batch * args.classes
    print(
        f"device={device} threads={args.threads} C={args.classes} D={args.dim} K={args.prototypes} "
        f"kmeans_iters={args.kmeans_iters} regions/step={regions} (median of {args.repeats})"
    )
    print(
        f"| M | k-means refresh (ms) | per Lloyd iter (ms) | enqueue (ms) | mixup contrast fwd+bwd (ms) "
        f"| objective excess of {args.kmeans_iters} over {CONVERGED_ITERS} iters (%) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        row = time_components(args, size, device, generator)
        print(f"| {size} | " + " | ".join(f"{value:.2f}" for value in row) + " |")


def objective(points: torch.Tensor, centroids: torch.Tensor) -> float:
    """Sum over classes and points of the squared distance to the nearest centroid."""
    return float(torch.cdist(points, centroids).min(dim=2).values.pow(2).sum())


def time_components(
    args: argparse.Namespace, size: int, device: torch.device, generator: torch.Generator
) -> tuple[float, ...]:
    """Refresh, per-Lloyd-iteration, enqueue and contrast step times (ms) for one memory size, and the
    k-means objective's excess (%) over a run of ``CONVERGED_ITERS`` iterations from the same seeding."""
    memory = filled_region_memory(args.classes, size, args.dim, device, generator)
    prototypes, iters = args.prototypes, args.kmeans_iters

    def refresh() -> None:
        kmeans(memory.memory, prototypes, iters=iters, generator=generator, valid=memory.valid)

    def seeding_only() -> None:
        kmeans(memory.memory, prototypes, iters=0, generator=generator, valid=memory.valid)

    regions = args.batch * args.classes
    embeddings = torch.randn(regions, args.dim, generator=generator, device=device, requires_grad=True)
    labels = torch.arange(args.classes, device=device).repeat(args.batch)
    scores = torch.rand(regions, generator=generator, device=device)
    valid = torch.rand(regions, generator=generator, device=device) > 0.8
    loss = RegionContrastLoss()

    def enqueue() -> None:
        memory.enqueue(embeddings.detach(), labels, scores, 0.7, valid=valid)

    def contrast_step() -> None:
        loss(embeddings, labels, valid, memory, generator=generator)["loss"].backward()

    refresh_ms = median_milliseconds(refresh, device, args.repeats)
    seeding_ms = median_milliseconds(seeding_only, device, args.repeats)
    per_iteration_ms = (refresh_ms - seeding_ms) / max(iters, 1)
    enqueue_ms = median_milliseconds(enqueue, device, args.repeats)
    contrast_ms = median_milliseconds(contrast_step, device, args.repeats)
    converged, used = (
        objective(
            memory.memory,
            kmeans(memory.memory, prototypes, iters=count, generator=torch.Generator(device).manual_seed(1)),
        )
        for count in (CONVERGED_ITERS, iters)
    )
    return refresh_ms, per_iteration_ms, enqueue_ms, contrast_ms, 100 * (used - converged) / converged


if __name__ == "__main__":
    main()
