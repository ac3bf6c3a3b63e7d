"""Confusion-matrix segmentation metrics (methods.md section 6), torch only.

Conventions used by the whole project:

* a confusion matrix is ``(C, C)`` int64 with rows = ground truth, columns = prediction;
* pixels whose target equals ``ignore_index`` are excluded; so are pixels whose target or
  prediction lies outside ``[0, C)`` (they are *counted nowhere*: an out-of-range prediction
  is neither a hit nor a miss, which is what evaluating pseudo labels that carry 255 "ignore"
  regions needs; ``argmax`` predictions are always in range);
* on accelerators, counting uses ``index_add_`` into a fixed-size histogram, not ``torch.bincount``,
  because ``bincount`` on CUDA reads ``max()`` back to the host (CPU tensors use ``bincount``);
  nothing here synchronises until :func:`segmentation_metrics` turns the matrix into Python floats;
* reported metrics are in **percent** (0..100), like mmseg tables; a class absent from both
  prediction and ground truth over the split has IoU NaN and is left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .labels import IGNORE_INDEX


def _histogram(
    flat_index: torch.Tensor, valid: torch.Tensor, num_bins: int, use_bincount: bool | None = None
) -> torch.Tensor:
    """Counts of ``flat_index`` values in ``[0, num_bins)`` over the ``valid`` entries, int64 ``(num_bins,)``.

    Invalid entries go to an overflow bin that is dropped, so shapes never depend on the data.
    ``use_bincount`` defaults to "on CPU" (bincount is ~3x faster there; on CUDA it syncs).
    """
    overflow = torch.full_like(flat_index, num_bins)
    index = torch.where(valid, flat_index, overflow)
    if use_bincount is None:
        use_bincount = index.device.type == "cpu"
    if use_bincount:
        return torch.bincount(index, minlength=num_bins + 1)[:num_bins]
    counts = torch.zeros(num_bins + 1, dtype=torch.int64, device=flat_index.device)
    counts.index_add_(0, index, torch.ones_like(index))
    return counts[:num_bins]


def confusion_matrix(
    prediction: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Confusion matrix of integer label maps of any (equal) shape.

    Args:
        prediction: ``(...)`` integer predicted labels.
        target: ``(...)`` integer ground-truth labels, ``ignore_index`` = not evaluated.
        num_classes: C.
        ignore_index: target value excluded from the counts.

    Returns:
        ``(C, C)`` int64 on the inputs' device, ``[gt, pred]`` = number of pixels.
        Pixels with an out-of-range target or prediction are counted nowhere.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    prediction = prediction.reshape(-1).long()
    target = target.reshape(-1).long()
    valid = (
        (target != ignore_index)
        & (target >= 0)
        & (target < num_classes)
        & (prediction >= 0)
        & (prediction < num_classes)
    )
    counts = _histogram(target * num_classes + prediction, valid, num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def threshold_sweep_confusion_matrices(
    foreground_scores: torch.Tensor,
    target: torch.Tensor,
    thresholds: torch.Tensor | Sequence[float],
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Confusion matrices of ``argmax(cat(threshold, scores))`` for every threshold at once.

    The prediction for threshold t is label 0 (background) where ``max_c scores[c] <= t`` (ties go to
    background, as ``argmax`` picks the first maximum) and ``1 + argmax_c scores[c]`` elsewhere. With
    L = F + 1 labels and T thresholds, each pixel is binned once by (gt, 1 + argmax, k) where k is the
    number of thresholds strictly below its max score; a cumulative sum over k then gives all T
    matrices, so cost is O(pixels + T * L^2), not O(T * pixels). Comparisons are made in float64.

    Args:
        foreground_scores: ``(F, ...)`` foreground class scores (e.g. CAMs), F >= 1.
        target: ``(...)`` integer labels over L = F + 1 classes (0 = background), ``ignore_index`` ignored.
        thresholds: ``(T,)`` background scores, any order.

    Returns:
        ``(T, L, L)`` int64 confusion matrices (rows = gt), in the order of ``thresholds``.
    """
    if foreground_scores.dim() < 1 or foreground_scores.shape[0] < 1:
        raise ValueError(f"foreground_scores must be (F>=1, ...), got shape {tuple(foreground_scores.shape)}")
    if foreground_scores.shape[1:] != target.shape:
        raise ValueError(
            f"foreground_scores spatial shape {tuple(foreground_scores.shape[1:])} != target shape "
            f"{tuple(target.shape)}"
        )
    device = foreground_scores.device
    thresholds = torch.as_tensor(thresholds, dtype=torch.float64, device=device).reshape(-1)
    if thresholds.numel() == 0:
        raise ValueError("thresholds must not be empty")
    num_labels = foreground_scores.shape[0] + 1
    num_thresholds = thresholds.numel()

    scores = foreground_scores.reshape(foreground_scores.shape[0], -1)
    max_score, argmax = scores.max(dim=0)
    foreground_label = argmax + 1
    sorted_thresholds, order = torch.sort(thresholds)
    # below[p] = #{t : t < max_score[p]} = number of (sorted) thresholds at which p is foreground.
    below = torch.searchsorted(sorted_thresholds, max_score.double().contiguous(), right=False)

    gt = target.reshape(-1).long().to(device)
    valid = (gt != ignore_index) & (gt >= 0) & (gt < num_labels)
    flat = (gt * num_labels + foreground_label) * (num_thresholds + 1) + below
    histogram = _histogram(flat, valid, num_labels * num_labels * (num_thresholds + 1))
    histogram = histogram.view(num_labels, num_labels, num_thresholds + 1)  # [gt, fg label, below]

    # Threshold j (sorted) predicts foreground iff below > j: suffix sums over `below`.
    suffix = histogram.flip(-1).cumsum(-1).flip(-1)  # suffix[..., k] = sum_{below >= k}
    foreground_counts = suffix[..., 1:]  # (L, L, T): below >= j + 1
    row_totals = histogram.sum(dim=(1, 2))  # (L,) valid pixels per gt class
    background_counts = row_totals[:, None] - foreground_counts.sum(1)  # (L, T)
    # Column 0 of foreground_counts is always zero (foreground labels start at 1).
    matrices = foreground_counts.permute(2, 0, 1).clone()  # (T, gt, pred)
    matrices[:, :, 0] += background_counts.transpose(0, 1)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(num_thresholds, device=device)
    return matrices[inverse]


def _percent(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``100 * numerator / denominator`` in float64, NaN where the denominator is 0."""
    ratio = numerator / denominator.clamp_min(1)
    return torch.where(denominator > 0, 100.0 * ratio, torch.full_like(ratio, math.nan))


def segmentation_metrics(confusion: torch.Tensor, class_names: Sequence[str] | None = None) -> dict:
    """mIoU, aAcc, mAcc and per-class IoU / accuracy from a ``(C, C)`` confusion matrix (rows = gt).

    IoU_c = TP / (TP + FP + FN); Acc_c = TP / (TP + FN). A class with no ground-truth and no predicted
    pixel has IoU NaN; a class with no ground-truth pixel has Acc NaN; NaNs are left out of the means.
    All values are Python floats in **percent**.

    Returns:
        ``{"mIoU", "aAcc", "mAcc", "per_class": [{"name", "iou", "acc"}, ...]}``.
    """
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got shape {tuple(confusion.shape)}")
    num_classes = confusion.shape[0]
    if class_names is None:
        class_names = [str(index) for index in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class_names for a {num_classes}-class confusion matrix")
    confusion = confusion.detach().to(device="cpu", dtype=torch.float64)
    true_positive = confusion.diagonal()
    ground_truth = confusion.sum(1)
    predicted = confusion.sum(0)
    iou = _percent(true_positive, ground_truth + predicted - true_positive)
    accuracy = _percent(true_positive, ground_truth)
    overall = _percent(true_positive.sum(), confusion.sum())
    return {
        "mIoU": torch.nanmean(iou).item(),
        "aAcc": overall.item(),
        "mAcc": torch.nanmean(accuracy).item(),
        "per_class": [
            {"name": name, "iou": class_iou, "acc": class_accuracy}
            for name, class_iou, class_accuracy in zip(class_names, iou.tolist(), accuracy.tolist())
        ],
    }


def format_metrics_table(metrics: dict, digits: int = 2) -> str:
    """A readable per-class table (class, IoU, Acc) followed by the mIoU / mAcc / aAcc summary row."""
    names = [str(entry["name"]) for entry in metrics["per_class"]]
    name_width = max([len("class"), len("summary"), *map(len, names)])
    value_width = max(7, digits + 5)

    def number(value: float) -> str:
        return f"{'nan' if math.isnan(value) else f'{value:.{digits}f}':>{value_width}}"

    header = f"{'class':<{name_width}} | {'IoU':>{value_width}} | {'Acc':>{value_width}}"
    rule = "-" * len(header)
    lines = [header, rule]
    for name, entry in zip(names, metrics["per_class"]):
        lines.append(f"{name:<{name_width}} | {number(entry['iou'])} | {number(entry['acc'])}")
    lines.append(rule)
    lines.append(
        f"{'summary':<{name_width}} | mIoU {number(metrics['mIoU']).strip()} | "
        f"mAcc {number(metrics['mAcc']).strip()} | aAcc {number(metrics['aAcc']).strip()}"
    )
    return "\n".join(lines)
