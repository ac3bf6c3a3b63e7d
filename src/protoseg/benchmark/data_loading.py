"""Training data loading throughput (images/s) of the built-in benchmark for several worker counts.

The loader is the trainer's: the VOC-layout dataset with the training transforms (random scale, flip,
normalise, crop), the seeded sampler, ``drop_last``. Each round builds a fresh loader per worker
count (the counts in turn), discards the first batch (worker start-up, timed separately) and times
the next ``batches`` batches.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from ..config import Config
from ..data.sampler import SeededSampler
from ..data.shapes import generate_shapes
from ..engine.datasets import build_split_dataset

GENERATED_IMAGES = 64


def _loader(cfg: Config, name: str, root: Path, workers: int) -> DataLoader:
    data = dataclasses.replace(cfg.data, name=name, root=str(root))
    dataset = build_split_dataset(data, data.train_split, train=True)
    sampler = SeededSampler(len(dataset), seed=cfg.train.seed, shuffle=True)
    return DataLoader(
        dataset, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=workers, drop_last=True
    )


def _time_loader(cfg: Config, name: str, root: Path, workers: int, batches: int) -> tuple[float, float]:
    """(start-up seconds to the first batch, seconds for the next ``batches`` batches)."""
    start = time.perf_counter()
    iterator = iter(_loader(cfg, name, root, workers))
    next(iterator)
    first = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    end = time.perf_counter()
    del iterator  # shuts the workers down
    return first - start, end - first


def loader_throughput(
    cfg: Config,
    root: str | Path | None,
    workers: tuple[int, ...] = (0, 2),
    batches: int = 10,
    rounds: int = 3,
) -> dict[str, Any]:
    """Images/s of the training loader of ``cfg`` for each worker count.

    ``root``: a dataset in ``cfg.data.name``'s layout; ``None`` generates a small shapes benchmark
    (64 images at the crop size) in a temporary folder.

    Returns ``{"root", "batch_size", "crop_size", "workers": {"0": {"images_per_s", "per_round",
    "startup_s"}, ...}}``; ``images_per_s`` is the median over rounds.
    """
    if batches < 1 or rounds < 1:
        raise ValueError(f"loader_throughput: batches and rounds must be >= 1, got {batches}, {rounds}")
    with tempfile.TemporaryDirectory(prefix="protoseg-bench-data-") as scratch:
        if root is None:
            generated = Path(scratch) / "shapes"
            generate_shapes(generated, size=max(cfg.data.crop_size), num_train=GENERATED_IMAGES, num_val=0)
            name, dataset_root, label = "voc", generated, f"generated shapes ({GENERATED_IMAGES} images)"
        else:
            name, dataset_root, label = cfg.data.name, Path(root), str(root)
        per_round: dict[int, list[float]] = {count: [] for count in workers}
        startup: dict[int, list[float]] = {count: [] for count in workers}
        for _ in range(rounds):
            for count in workers:
                startup_s, seconds = _time_loader(cfg, name, dataset_root, count, batches)
                startup[count].append(startup_s)
                per_round[count].append(batches * cfg.train.batch_size / seconds)
    return {
        "root": label,
        "batch_size": cfg.train.batch_size,
        "crop_size": list(cfg.data.crop_size),
        "batches": batches,
        "workers": {
            str(count): {
                "images_per_s": round(statistics.median(per_round[count]), 2),
                "per_round": [round(value, 2) for value in per_round[count]],
                "startup_s": round(statistics.median(startup[count]), 3),
            }
            for count in workers
        },
    }
