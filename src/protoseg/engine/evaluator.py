"""Validation over a whole split: one confusion matrix of a method's predicted labels vs the masks.

The labels come from :meth:`protoseg.methods.Method.validation_labels`: the segmentation of a
segmentor (with the run's test-time augmentation), the CAM seeds of a weakly supervised method.
Each rank evaluates its shard; the matrices are summed over ranks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..data.sampler import ShardedEvalIndices
from ..methods import Method, ValidationSettings
from ..ops.distributed import all_reduce_sum_
from ..ops.inference import InferenceSettings
from ..ops.metrics import confusion_matrix, segmentation_metrics
from .distributed import DistributedContext
from .interrupt import ignore_interrupts_in_worker


def validation_settings(cfg: Any) -> ValidationSettings:
    """The validation settings of a run's config (``eval`` section; the window defaults to the crop)."""
    return ValidationSettings(
        inference=InferenceSettings.from_config(cfg.eval, cfg.data.crop_size),
        cam_threshold=cfg.eval.cam_threshold,
    )


def _shard_loader(dataset, context: DistributedContext, num_workers: int) -> DataLoader:
    indices = list(ShardedEvalIndices(len(dataset), context.rank, context.world_size))
    return DataLoader(
        Subset(dataset, indices),
        batch_size=1,
        shuffle=False,
        num_workers=num_workers,
        worker_init_fn=ignore_interrupts_in_worker if num_workers > 0 else None,
    )


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the module itself otherwise)."""
    return module.module if hasattr(module, "module") else module


@torch.no_grad()
def evaluate(
    method: Method,
    dataset,
    device: torch.device,
    settings: ValidationSettings,
    context: DistributedContext | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """mIoU, aAcc, mAcc and per-class IoU of ``method``'s validation labels over ``dataset`` (one
    confusion matrix accumulated over the whole split and all ranks)."""
    context = context or DistributedContext()
    method = unwrap(method)
    was_training = method.training
    method.eval()
    num_classes = dataset.num_classes
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)
    loader = _shard_loader(dataset, context, num_workers)
    for sample in tqdm(loader, desc="eval", disable=not (progress and context.is_main), leave=False):
        batch = {key: value.to(device, non_blocking=True) for key, value in sample.items() if key != "name"}
        labels = method.validation_labels(batch, settings)
        confusion += confusion_matrix(labels, batch["mask"], num_classes)
    all_reduce_sum_(confusion)
    method.train(was_training)
    return segmentation_metrics(confusion.cpu(), dataset.class_names)
