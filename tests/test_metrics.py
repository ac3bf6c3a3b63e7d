"""Confusion-matrix metrics against brute-force per-pixel Python references (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from protoseg.ops import metrics as metrics_module
from protoseg.ops.metrics import (
    confusion_matrix,
    format_metrics_table,
    segmentation_metrics,
    threshold_sweep_confusion_matrices,
)


def brute_force_confusion(prediction, target, num_classes, ignore_index=255):
    counts = [[0] * num_classes for _ in range(num_classes)]
    for predicted, truth in zip(prediction.reshape(-1).tolist(), target.reshape(-1).tolist()):
        if truth == ignore_index or not 0 <= truth < num_classes or not 0 <= predicted < num_classes:
            continue
        counts[truth][predicted] += 1
    return counts


def brute_force_metrics(counts):
    num_classes = len(counts)
    ious, accuracies = [], []
    for c in range(num_classes):
        true_positive = counts[c][c]
        ground_truth = sum(counts[c])
        predicted = sum(counts[r][c] for r in range(num_classes))
        union = ground_truth + predicted - true_positive
        ious.append(100.0 * true_positive / union if union else math.nan)
        accuracies.append(100.0 * true_positive / ground_truth if ground_truth else math.nan)
    total = sum(map(sum, counts))
    correct = sum(counts[c][c] for c in range(num_classes))

    def nanmean(values):
        kept = [value for value in values if not math.isnan(value)]
        return sum(kept) / len(kept) if kept else math.nan

    return nanmean(ious), 100.0 * correct / total, nanmean(accuracies), ious, accuracies


def test_confusion_matrix_matches_brute_force_with_ignore_and_out_of_range():
    generator = torch.Generator().manual_seed(0)
    num_classes = 5
    target = torch.randint(0, num_classes, (2, 9, 11), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.2] = 255
    prediction = torch.randint(0, num_classes, (2, 9, 11), generator=generator)
    prediction[0, 0, :4] = torch.tensor([255, -1, num_classes, 7])  # out of range: counted nowhere
    target[0, 0, :4] = 1
    result = confusion_matrix(prediction, target, num_classes)
    assert result.dtype == torch.int64 and result.shape == (num_classes, num_classes)
    assert result.tolist() == brute_force_confusion(prediction, target, num_classes)
    assert result.sum().item() == ((target != 255).sum() - 4).item()


def test_confusion_matrix_custom_ignore_index_and_shape_error():
    target = torch.tensor([[0, 1, 2], [2, 2, 0]])
    prediction = torch.tensor([[0, 2, 2], [1, 2, 0]])
    result = confusion_matrix(prediction, target, 3, ignore_index=2)
    assert result.tolist() == [[2, 0, 0], [0, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(prediction, target[:1], 3)


def test_segmentation_metrics_match_brute_force_in_percent():
    generator = torch.Generator().manual_seed(1)
    num_classes = 6
    target = torch.randint(0, num_classes - 1, (40, 40), generator=generator)  # class 5 never in gt
    target[:3] = 255
    prediction = torch.randint(0, num_classes - 2, (40, 40), generator=generator)  # 4, 5 never predicted
    counts = brute_force_confusion(prediction, target, num_classes)
    names = [f"class{c}" for c in range(num_classes)]
    metrics = segmentation_metrics(confusion_matrix(prediction, target, num_classes), names)
    miou, aacc, macc, ious, accuracies = brute_force_metrics(counts)
    assert metrics["mIoU"] == pytest.approx(miou, abs=1e-9)
    assert metrics["aAcc"] == pytest.approx(aacc, abs=1e-9)
    assert metrics["mAcc"] == pytest.approx(macc, abs=1e-9)
    assert [entry["name"] for entry in metrics["per_class"]] == names
    for entry, iou, accuracy in zip(metrics["per_class"], ious, accuracies):
        assert entry["iou"] == pytest.approx(iou, abs=1e-9, nan_ok=True)
        assert entry["acc"] == pytest.approx(accuracy, abs=1e-9, nan_ok=True)
    # Class 5: absent from prediction and ground truth -> NaN, excluded from the mean.
    assert math.isnan(metrics["per_class"][5]["iou"]) and math.isnan(metrics["per_class"][5]["acc"])
    # Class 4: in ground truth, never predicted -> IoU 0, counted in the mean.
    assert metrics["per_class"][4]["iou"] == 0.0
    finite = [entry["iou"] for entry in metrics["per_class"] if not math.isnan(entry["iou"])]
    assert len(finite) == 5 and metrics["mIoU"] == pytest.approx(sum(finite) / 5)


def test_perfect_prediction_is_100_percent_and_empty_is_nan():
    target = torch.tensor([0, 0, 1, 2, 255])
    metrics = segmentation_metrics(confusion_matrix(target, target, 4))
    assert metrics["mIoU"] == 100.0 and metrics["aAcc"] == 100.0 and metrics["mAcc"] == 100.0
    assert math.isnan(metrics["per_class"][3]["iou"])
    empty = segmentation_metrics(torch.zeros(3, 3, dtype=torch.int64))
    assert math.isnan(empty["mIoU"]) and math.isnan(empty["aAcc"])


def test_format_metrics_table_lists_every_class_and_summary():
    target = torch.tensor([0, 1, 1, 2])
    prediction = torch.tensor([0, 1, 2, 2])
    metrics = segmentation_metrics(confusion_matrix(prediction, target, 4), ["bg", "cat", "dog", "cow"])
    table = format_metrics_table(metrics)
    lines = table.splitlines()
    assert lines[0].split("|")[0].strip() == "class"
    rows = {line.split("|")[0].strip(): line for line in lines[2:6]}
    assert set(rows) == {"bg", "cat", "dog", "cow"}
    assert "100.00" in rows["bg"] and "nan" in rows["cow"] and "50.00" in rows["cat"]
    assert f"mIoU {metrics['mIoU']:.2f}" in lines[-1] and "aAcc 75.00" in lines[-1]


def brute_force_sweep(scores, target, thresholds, ignore_index=255):
    num_foreground, height, width = scores.shape
    num_labels = num_foreground + 1
    matrices = []
    for threshold in thresholds:
        counts = [[0] * num_labels for _ in range(num_labels)]
        for y in range(height):
            for x in range(width):
                truth = int(target[y, x])
                if truth == ignore_index:
                    continue
                values = [float(threshold)] + [float(scores[c, y, x]) for c in range(num_foreground)]
                predicted = max(range(num_labels), key=lambda label: (values[label], -label))
                counts[truth][predicted] += 1
        matrices.append(counts)
    return matrices


def test_threshold_sweep_equals_per_threshold_brute_force():
    generator = torch.Generator().manual_seed(2)
    scores = torch.rand(3, 8, 9, generator=generator, dtype=torch.float64)
    scores[:, 0, 0] = 0.25  # exact tie with a threshold: background wins (argmax picks the first maximum)
    scores[1, 0, 1] = 0.9  # tie among foreground classes: first one wins
    scores[2, 0, 1] = 0.9
    target = torch.randint(0, 4, (8, 9), generator=generator)
    target[2] = 255
    thresholds = [0.5, 0.0, 0.25, 1.0, 0.75]  # unsorted on purpose
    result = threshold_sweep_confusion_matrices(scores, target, thresholds)
    assert result.shape == (5, 4, 4) and result.dtype == torch.int64
    assert result.tolist() == brute_force_sweep(scores, target, thresholds)
    single = threshold_sweep_confusion_matrices(scores, target, [0.25])[0]
    prediction = torch.where(scores.max(0).values > 0.25, scores.argmax(0) + 1, 0)
    assert torch.equal(single, confusion_matrix(prediction, target, 4))


def test_histogram_paths_agree():
    generator = torch.Generator().manual_seed(3)
    index = torch.randint(0, 12, (500,), generator=generator)
    valid = torch.rand(500, generator=generator) > 0.3
    expected = [int(((index == b) & valid).sum()) for b in range(12)]
    for use_bincount in (True, False):
        assert metrics_module._histogram(index, valid, 12, use_bincount).tolist() == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_confusion_matrix_on_cuda_does_not_synchronise():
    prediction = torch.randint(0, 7, (4, 64, 64), device="cuda")
    target = torch.randint(0, 7, (4, 64, 64), device="cuda")
    scores = torch.rand(6, 4, 64, 64, device="cuda")
    thresholds = torch.tensor([0.1, 0.5], dtype=torch.float64, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = confusion_matrix(prediction, target, 7)
        sweep = threshold_sweep_confusion_matrices(scores, target, thresholds)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.device.type == "cuda" and sweep.shape == (2, 7, 7)
    assert result.cpu().tolist() == brute_force_confusion(prediction.cpu(), target.cpu(), 7)
