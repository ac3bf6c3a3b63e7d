"""The methods' components timed alone, and how their time grows with the work.

- ProtoSeg prototype learning (assign by segmented Sinkhorn + momentum update + targets, the part of
  a training step after the forward) against the number of classes C, of pixels N and of prototypes
  per class K; the segmented Sinkhorn alone in the same sweeps.
- RCA's batched k-means refresh against the memory size M (slots per class).
- PPC's contrast (forward + backward) against the batch size.

Every sweep times all its sizes in interleaved rounds (:func:`~protoseg.benchmark.timing.interleaved_times`)
and reports the growth exponent (slope of log time against log size: 0 flat, 1 linear).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..losses import PixelToPrototypeContrast
from ..ops import kmeans, segmented_sinkhorn, sinkhorn
from ..prototypes import PrototypeBank, RegionMemory
from .settings import ScalingSettings
from .steps import fill_region_memory
from .timing import growth_exponent, interleaved_times, milliseconds

IGNORED_FRACTION = 0.1
CORRECT_FRACTION = 0.7


# -- ProtoSeg ---------------------------------------------------------------------------------------
def prototype_inputs(
    num_pixels: int, num_classes: int, num_prototypes: int, dim: int, device: torch.device, seed: int = 0
) -> tuple[PrototypeBank, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A prototype bank ``(C, K, D)`` and N unit embeddings ``(N, D)``, labels ``(N,)`` (10 % ignored,
    255) and a ``(N,)`` bool "predicted correctly" mask (70 % true), all on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(num_pixels, dim, generator=generator), dim=1)
    labels = torch.randint(0, num_classes, (num_pixels,), generator=generator)
    labels[torch.rand(num_pixels, generator=generator) < IGNORED_FRACTION] = 255
    correct = torch.rand(num_pixels, generator=generator) < CORRECT_FRACTION
    bank = PrototypeBank(num_classes, num_prototypes, dim, generator=generator)
    return bank.to(device), embeddings.to(device), labels.to(device), correct.to(device)


def prototype_learning(
    bank: PrototypeBank,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    correct: torch.Tensor,
    similarities: torch.Tensor | None,
) -> torch.Tensor:
    """ProtoSeg training steps 2-4 (cluster, momentum update, targets ``c * K + k``, -1 = ignored)."""
    assignment = bank.cluster(embeddings, labels, similarities=similarities)
    bank.update(embeddings, labels, assignment.update, correct)
    valid = bank.valid_labels(labels)
    return torch.where(valid, labels * bank.num_prototypes + assignment.target, -1)


def full_matmul_own_similarities(bank: PrototypeBank, embeddings: torch.Tensor, labels: torch.Tensor):
    """The O(N * C * K * D) alternative to ``own_class_similarities``: every similarity, then the
    own-class slice ``(N, K)``."""
    classes = labels.clamp(0, bank.num_classes - 1).view(-1, 1, 1).expand(-1, 1, bank.num_prototypes)
    return bank.similarities(embeddings).gather(1, classes).squeeze(1)


def protoseg_components(
    num_pixels: int, num_classes: int, num_prototypes: int, dim: int, device: torch.device
) -> dict[str, Callable[[], object]]:
    """Callables of ProtoSeg's components at one size (each one call of the component).

    ``learning_head_path``: what a training step pays on top of the forward (similarities given);
    ``learning_standalone_path``: the same from embeddings and labels only.
    """
    bank, embeddings, labels, correct = prototype_inputs(num_pixels, num_classes, num_prototypes, dim, device)
    with torch.no_grad():
        similarities = bank.similarities(embeddings)
        own = bank.own_class_similarities(embeddings, labels)
    per_class = num_pixels // num_classes
    spread = torch.arange(num_pixels, device=device) % num_prototypes
    dense_scores = torch.randn(num_classes, per_class, num_prototypes, device=device)
    return {
        "learning_head_path": lambda: prototype_learning(bank, embeddings, labels, correct, similarities),
        "learning_standalone_path": lambda: prototype_learning(bank, embeddings, labels, correct, None),
        "own_similarities_grouped": lambda: bank.own_class_similarities(embeddings, labels),
        "own_similarities_full_matmul": lambda: full_matmul_own_similarities(bank, embeddings, labels),
        "segmented_sinkhorn": lambda: segmented_sinkhorn(own, labels, num_classes),
        "dense_batched_sinkhorn": lambda: sinkhorn(dense_scores),  # one (C, N / C, K) call
        "update": lambda: bank.update(embeddings, labels, spread, correct),
    }


def _prototype_sweep_functions(
    sizes: Sequence[tuple[int, int, int]], dim: int, device: torch.device
) -> dict[str, Callable[[], object]]:
    functions: dict[str, Callable[[], object]] = {}
    for num_pixels, num_classes, num_prototypes in sizes:
        bank, embeddings, labels, correct = prototype_inputs(
            num_pixels, num_classes, num_prototypes, dim, device
        )
        with torch.no_grad():
            similarities = bank.similarities(embeddings)
            own = bank.own_class_similarities(embeddings, labels)
        key = f"N={num_pixels},C={num_classes},K={num_prototypes}"

        def learning(
            bank=bank, embeddings=embeddings, labels=labels, correct=correct, similarities=similarities
        ):
            return prototype_learning(bank, embeddings, labels, correct, similarities)

        def assign(own=own, labels=labels, num_classes=num_classes):
            return segmented_sinkhorn(own, labels, num_classes)

        functions["learning " + key] = learning
        functions["sinkhorn " + key] = assign
    return functions


def _sweep_result(
    variable: str, values: Sequence[int], keys: Sequence[str], times: dict[str, list[float]], component: str
) -> dict[str, Any]:
    times_ms = [milliseconds(times[f"{component} {key}"]) for key in keys]
    medians = [statistics.median(values_ms) for values_ms in times_ms]
    return {
        "variable": variable,
        "sizes": list(values),
        "median_ms": medians,
        "times_ms": times_ms,
        "ratio_last_over_first": round(medians[-1] / medians[0], 3),
        "growth_exponent": round(growth_exponent(values, medians), 3),
    }


def prototype_learning_scaling(scaling: ScalingSettings, device: torch.device) -> dict[str, Any]:
    """Prototype learning and segmented Sinkhorn times against C, N and K (one interleaved sweep each).

    Returns ``{"prototype_learning": {"classes": sweep, "pixels": sweep, "prototypes": sweep},
    "sinkhorn": {...}}``, each sweep with ``sizes``, ``median_ms``, ``times_ms`` (per round),
    ``ratio_last_over_first`` and ``growth_exponent``.
    """
    sweeps = {
        "classes": [(scaling.base_pixels, c, scaling.base_prototypes) for c in scaling.classes],
        "pixels": [(n, scaling.base_classes, scaling.base_prototypes) for n in scaling.pixels],
        "prototypes": [(scaling.base_pixels, scaling.base_classes, k) for k in scaling.prototypes],
    }
    variable_index = {"classes": 1, "pixels": 0, "prototypes": 2}
    results: dict[str, dict[str, Any]] = {"prototype_learning": {}, "sinkhorn": {}}
    for name, sizes in sweeps.items():
        functions = _prototype_sweep_functions(sizes, scaling.dim, device)
        times = interleaved_times(functions, device, scaling.warmup, scaling.repeats)
        del functions
        keys = [f"N={n},C={c},K={k}" for n, c, k in sizes]
        values = [size[variable_index[name]] for size in sizes]
        results["prototype_learning"][name] = _sweep_result(name, values, keys, times, "learning")
        results["sinkhorn"][name] = _sweep_result(name, values, keys, times, "sinkhorn")
    return results


# -- RCA --------------------------------------------------------------------------------------------
def filled_region_memory(
    classes: int, size: int, dim: int, device: torch.device, generator: torch.Generator
) -> RegionMemory:
    """A full RCA memory ``(C, M, D)`` whose classes hold Gaussian mixtures (20 modes each)."""
    memory = RegionMemory(classes, dim, size=size).to(device)
    fill_region_memory(memory, generator)
    return memory


def kmeans_refresh_scaling(scaling: ScalingSettings, device: torch.device) -> dict[str, Any]:
    """RCA's k-means refresh (one batched call for all classes) against the memory size M."""
    generator = torch.Generator(device=device).manual_seed(0)
    functions: dict[str, Callable[[], object]] = {}
    keys = []
    for size in scaling.memory_sizes:
        memory = filled_region_memory(scaling.memory_classes, size, scaling.memory_dim, device, generator)
        keys.append(f"M={size}")

        def refresh(memory=memory):
            return kmeans(
                memory.memory,
                scaling.base_prototypes,
                iters=scaling.kmeans_iters,
                generator=generator,
                valid=memory.valid,
            )

        functions["refresh " + keys[-1]] = refresh
    times = interleaved_times(functions, device, scaling.warmup, scaling.repeats)
    result = _sweep_result("memory_size", scaling.memory_sizes, keys, times, "refresh")
    result.update(
        classes=scaling.memory_classes,
        dim=scaling.memory_dim,
        prototypes=scaling.base_prototypes,
        kmeans_iters=scaling.kmeans_iters,
    )
    return result


# -- PPC --------------------------------------------------------------------------------------------
def ppc_loss_scaling(scaling: ScalingSettings, device: torch.device) -> dict[str, Any]:
    """PPC's contrast terms (forward + backward, two aligned views) against the batch size."""
    generator = torch.Generator(device=device).manual_seed(0)
    contrast = PixelToPrototypeContrast(generator=generator)
    side, classes, dim = scaling.ppc_feature_size, scaling.ppc_classes, scaling.ppc_dim
    functions: dict[str, Callable[[], object]] = {}
    keys = []

    def tensor(*shape: int, grad: bool = False) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device).requires_grad_(grad)

    for batch in scaling.ppc_batches:
        views = (
            tensor(batch, classes + 1, side, side),
            tensor(batch, dim, side, side, grad=True),
            tensor(batch, classes + 1, side, side),
            tensor(batch, dim, side, side, grad=True),
        )
        tags = (torch.rand(batch, classes, generator=generator, device=device) < 0.2).float()
        tags[:, 0] = 1.0  # every image has at least one tag
        keys.append(f"B={batch}")

        def step(views=views, tags=tags):
            contrast(*views, tags)["loss"].backward()

        functions["ppc " + keys[-1]] = step
    times = interleaved_times(functions, device, scaling.warmup, scaling.repeats)
    result = _sweep_result("batch", scaling.ppc_batches, keys, times, "ppc")
    result.update(feature_size=side, classes=classes, dim=dim)
    return result


def component_scaling(scaling: ScalingSettings, device: torch.device) -> dict[str, Any]:
    """Every component sweep: prototype learning and Sinkhorn (C, N, K), k-means refresh (M), PPC (B)."""
    results = prototype_learning_scaling(scaling, device)
    results["rca_kmeans_refresh"] = kmeans_refresh_scaling(scaling, device)
    results["ppc_loss"] = ppc_loss_scaling(scaling, device)
    results["config"] = {
        "dim": scaling.dim,
        "base_pixels": scaling.base_pixels,
        "base_classes": scaling.base_classes,
        "base_prototypes": scaling.base_prototypes,
        "warmup": scaling.warmup,
        "repeats": scaling.repeats,
    }
    return results
