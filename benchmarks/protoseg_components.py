"""Time ProtoSeg's prototype learning and Sinkhorn at C = 19 and C = 150 (same process).

Prototype learning = assign (segmented Sinkhorn) + momentum update + targets, for N pixels of
dimension D with K prototypes per class. Two paths are timed:

- ``learning_head_path``: the similarities ``(N, C, K)`` come from the head's forward (as in
  training) and the own-class slice is gathered: what a training step pays on top of the forward.
- ``learning_standalone_path``: only embeddings and labels are given; the own-class
  similarities are computed by :meth:`PrototypeBank.own_class_similarities` (grouped product,
  O(N * K * D)), timed alone as ``own_similarities_grouped`` beside the O(N * C * K * D)
  alternative ``own_similarities_full_matmul``.

All components of both C are timed in interleaved rounds (one call of each per round).

Usage: ``python benchmarks/protoseg_components.py [--json] [--pixels N] [--repeats R] [--device cpu|cuda]``.
Reports the median over repeats after warm-up, and the ratio C=150 / C=19 (target: <= 1.5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from protoseg.ops import segmented_sinkhorn, sinkhorn
from protoseg.prototypes import PrototypeBank


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_medians(
    functions: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    """Median seconds of each function; one call of each per round, so load changes hit all alike."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    _synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            _synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _inputs(
    num_pixels: int, num_classes: int, num_prototypes: int, dim: int, device: torch.device, seed: int
):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.nn.functional.normalize(torch.randn(num_pixels, dim, generator=generator), dim=1)
    labels = torch.randint(0, num_classes, (num_pixels,), generator=generator)
    labels[torch.rand(num_pixels, generator=generator) < 0.1] = 255
    correct = torch.rand(num_pixels, generator=generator) < 0.7
    bank = PrototypeBank(num_classes, num_prototypes, dim, generator=generator)
    return bank.to(device), embeddings.to(device), labels.to(device), correct.to(device)


def _prototype_learning(bank: PrototypeBank, embeddings, labels, correct, similarities) -> torch.Tensor:
    assignment = bank.cluster(embeddings, labels, similarities=similarities)
    bank.update(embeddings, labels, assignment.update, correct)
    valid = bank.valid_labels(labels)
    return torch.where(valid, labels * bank.num_prototypes + assignment.target, -1)


def _full_matmul_own_similarities(bank: PrototypeBank, embeddings, labels) -> torch.Tensor:
    """The O(N * C * K * D) alternative: every similarity, then the own-class slice."""
    classes = labels.clamp(0, bank.num_classes - 1).view(-1, 1, 1).expand(-1, 1, bank.num_prototypes)
    return bank.similarities(embeddings).gather(1, classes).squeeze(1)


def _components(num_pixels, num_classes, num_prototypes, dim, device) -> dict[str, Callable[[], object]]:
    bank, embeddings, labels, correct = _inputs(num_pixels, num_classes, num_prototypes, dim, device, seed=0)
    with torch.no_grad():
        similarities = bank.similarities(embeddings)
        own = bank.own_class_similarities(embeddings, labels)
    per_class = num_pixels // num_classes
    spread = torch.arange(num_pixels, device=device) % num_prototypes
    dense_scores = torch.randn(num_classes, per_class, num_prototypes, device=device)
    return {
        # What a training step pays on top of the forward (similarities already computed).
        "learning_head_path": lambda: _prototype_learning(bank, embeddings, labels, correct, similarities),
        "learning_standalone_path": lambda: _prototype_learning(bank, embeddings, labels, correct, None),
        "own_similarities_grouped": lambda: bank.own_class_similarities(embeddings, labels),
        "own_similarities_full_matmul": lambda: _full_matmul_own_similarities(bank, embeddings, labels),
        "segmented_sinkhorn": lambda: segmented_sinkhorn(own, labels, num_classes),
        # Dense batched form: one (C, N / C, K) call.
        "dense_batched_sinkhorn": lambda: sinkhorn(dense_scores),
        "update": lambda: bank.update(embeddings, labels, spread, correct),
    }


def run(
    num_pixels: int, dim: int, num_prototypes: int, repeats: int, warmup: int, device: torch.device
) -> dict:
    class_counts = (19, 150)
    functions = {}
    for num_classes in class_counts:
        for name, function in _components(num_pixels, num_classes, num_prototypes, dim, device).items():
            functions[(name, num_classes)] = function
    medians = _interleaved_medians(functions, device, warmup, repeats)
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
