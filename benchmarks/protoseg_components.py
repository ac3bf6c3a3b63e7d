"""Time ProtoSeg's prototype learning and Sinkhorn at C = 19 and C = 150 (same process).

Prototype learning = assign (segmented Sinkhorn) + momentum update + targets, for N pixels of
dimension D with K prototypes per class. Two paths are timed:

- ``learning_head_path``: the similarities ``(N, C, K)`` come from the head's forward (as in
  training) and the own-class slice is gathered: what a training step pays on top of the forward.
- ``learning_standalone_path``: only embeddings and labels are given; the own-class
  similarities are computed by :meth:`PrototypeBank.own_class_similarities` (grouped product,
  O(N * K * D)), timed alone as ``own_similarities_grouped`` beside the O(N * C * K * D)
  alternative ``own_similarities_full_matmul``.

All components of both C are timed in interleaved rounds (one call of each per round, the order
rotated each round); the components live in :mod:`protoseg.benchmark.components`, and
``protoseg benchmark --suite scaling`` sweeps C, N and K with them.

Usage: ``python benchmarks/protoseg_components.py [--json] [--pixels N] [--repeats R] [--device cpu|cuda]``.
Reports the median over repeats after warm-up, and the ratio C=150 / C=19 (target: <= 1.5).
"""

from __future__ import annotations

import argparse
import json

import torch

from protoseg.benchmark.components import protoseg_components
from protoseg.benchmark.timing import interleaved_medians


def run(
    num_pixels: int, dim: int, num_prototypes: int, repeats: int, warmup: int, device: torch.device
) -> dict:
    class_counts = (19, 150)
    functions = {}
    for num_classes in class_counts:
        components = protoseg_components(num_pixels, num_classes, num_prototypes, dim, device)
        for name, function in components.items():
            functions[(name, num_classes)] = function
    medians = interleaved_medians(functions, device, warmup, repeats)
    results: dict[str, dict] = {f"C={c}": {} for c in class_counts}
    for (name, num_classes), seconds in medians.items():
        results[f"C={num_classes}"][name] = seconds
    small, large = results["C=19"], results["C=150"]
    results["ratio_C150_over_C19"] = {name: large[name] / small[name] for name in small}
    results["config"] = {
        "pixels": num_pixels,
        "dim": dim,
        "num_prototypes": num_prototypes,
        "repeats": repeats,
        "warmup": warmup,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--pixels", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--prototypes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = run(
        args.pixels, args.dim, args.prototypes, args.repeats, args.warmup, torch.device(args.device)
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    config = results["config"]
    print(
        f"N={config['pixels']} D={config['dim']} K={config['num_prototypes']} device={config['device']} "
        f"threads={config['threads']} (median of {config['repeats']} after {config['warmup']} warm-up)"
    )
    print(f"{'component':40s} {'C=19 (ms)':>11s} {'C=150 (ms)':>11s} {'ratio':>7s}")
    for name, ratio in results["ratio_C150_over_C19"].items():
        small, large = results["C=19"][name] * 1e3, results["C=150"][name] * 1e3
        print(f"{name:40s} {small:11.2f} {large:11.2f} {ratio:7.2f}")


if __name__ == "__main__":
    main()
