"""Evaluation over a whole split: confusion-matrix mIoU (segmentors) and CAM-seed mIoU (WSSS)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..config import EvalConfig
from ..data.sampler import ShardedEvalIndices
from ..ops.metrics import confusion_matrix, segmentation_metrics
from .distributed import DistributedContext, all_reduce_sum
from .inference import predict_probabilities


def _shard_loader(dataset, context: DistributedContext, num_workers: int) -> DataLoader:
    indices = list(ShardedEvalIndices(len(dataset), context.rank, context.world_size))
    return DataLoader(Subset(dataset, indices), batch_size=1, shuffle=False, num_workers=num_workers)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    dataset,
    device: torch.device,
    eval_cfg: EvalConfig,
    context: DistributedContext | None = None,
    num_workers: int = 0,
    progress: bool = False,
    window: list[int] | None = None,
) -> dict[str, Any]:
    """mIoU, aAcc, mAcc and per-class IoU of a Segmentor over ``dataset`` (one confusion matrix
    accumulated over the whole split, all-reduced across ranks)."""
    context = context or DistributedContext()
    segmentor = _unwrap(model)
    was_training = segmentor.training
    segmentor.eval()
    num_classes = dataset.num_classes
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)
    loader = _shard_loader(dataset, context, num_workers)
    for sample in tqdm(loader, desc="eval", disable=not (progress and context.is_main), leave=False):
        images = sample["image"].to(device, non_blocking=True)
        target = sample["mask"].to(device, non_blocking=True)
        probabilities = predict_probabilities(
            segmentor.predict,
            images,
            num_classes,
            scales=eval_cfg.scales,
            flip=eval_cfg.flip,
            mode=eval_cfg.mode,
            window=eval_cfg.crop_size or window,
            stride=eval_cfg.stride,
        )
        confusion += confusion_matrix(probabilities.argmax(1), target, num_classes)
    all_reduce_sum(confusion, context)
    segmentor.train(was_training)
    return segmentation_metrics(confusion.cpu(), dataset.class_names)


def cam_seed_prediction(cams: torch.Tensor, tags: torch.Tensor, size, bg_threshold: float) -> torch.Tensor:
    """Seed labels from raw CAMs: ``argmax(cat(bg_threshold, normalised CAMs))``.

    ``cams`` (B, C, h, w) raw foreground CAMs, ``tags`` (B, C) -> (B, H, W) labels with 0 = background.
    CAMs are upsampled, ReLU'd, max-normalised per class and zeroed for classes not in the tags.
    """
    cams = F.interpolate(cams.float(), size=size, mode="bilinear", align_corners=False).relu()
    cams = cams / (cams.amax(dim=(2, 3), keepdim=True) + 1e-5) * tags[:, :, None, None]
    background = torch.full_like(cams[:, :1], bg_threshold)
    return torch.cat([background, cams], dim=1).argmax(dim=1)


@torch.no_grad()
def evaluate_cam_seeds(
    method: nn.Module,
    dataset,
    device: torch.device,
    bg_threshold: float,
    context: DistributedContext | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Single-scale CAM-seed mIoU of a WSSS method at one background threshold (for periodic
    validation during CAM training; the full multi-scale sweep is ``protoseg seeds-eval``)."""
    context = context or DistributedContext()
    method = _unwrap(method)
    was_training = method.training
    method.eval()
    num_classes = dataset.num_classes
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)
    for sample in tqdm(
        _shard_loader(dataset, context, num_workers),
        desc="seeds",
        disable=not (progress and context.is_main),
        leave=False,
    ):
        images = sample["image"].to(device)
        target = sample["mask"].to(device)
        seeds = cam_seed_prediction(
            method.cams(images), sample["tags"].to(device), target.shape[-2:], bg_threshold
        )
        confusion += confusion_matrix(seeds, target, num_classes)
    all_reduce_sum(confusion, context)
    method.train(was_training)
    return segmentation_metrics(confusion.cpu(), dataset.class_names)
