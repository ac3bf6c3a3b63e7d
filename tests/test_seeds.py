"""Seed evaluation: one-pass threshold sweep vs evaluating each threshold separately, by brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protoseg.wsss.cam_inference import cam_path, load_cam, save_cam
from protoseg.wsss.seeds import evaluate_seeds, format_seed_table, parse_thresholds, plot_seed_curve

NUM_FOREGROUND = 4


def brute_force_miou(cam_dir, masks, threshold, num_labels):
    """Seeds by a per-pixel loop over argmax(cat(t, CAM)), confusion over the split, mIoU in percent."""
    counts = np.zeros((num_labels, num_labels), dtype=np.int64)
    for name, mask in masks.items():
        dense = load_cam(cam_path(cam_dir, name)).dense().astype(np.float64)
        for y in range(mask.shape[0]):
            for x in range(mask.shape[1]):
                if mask[y, x] == 255:
                    continue
                scores = [threshold] + list(dense[:, y, x])
                counts[mask[y, x], int(np.argmax(scores))] += 1
    ious = []
    for c in range(num_labels):
        union = counts[c].sum() + counts[:, c].sum() - counts[c, c]
        if union:
            ious.append(100.0 * counts[c, c] / union)
    return sum(ious) / len(ious)


@pytest.fixture
def seed_data(tmp_path):
    generator = torch.Generator().manual_seed(0)
    masks = {}
    for index in range(3):
        height, width = 6 + index, 7
        tags = torch.zeros(NUM_FOREGROUND)
        present = torch.randperm(NUM_FOREGROUND, generator=generator)[: 1 + index % 2]
        tags[present] = 1
        cam = torch.rand(NUM_FOREGROUND, height, width, generator=generator) * tags[:, None, None]
        save_cam(cam_path(tmp_path, f"im{index}"), cam, tags)
        # Ground truth correlated with the CAM so that the best threshold is interior.
        dense = load_cam(cam_path(tmp_path, f"im{index}")).dense()
        mask = np.where(dense.max(0) > 0.35, dense.argmax(0) + 1, 0).astype(np.uint8)
        noise = torch.rand(height, width, generator=generator).numpy()
        mask[noise < 0.15] = 0
        mask[noise > 0.9] = 255
        masks[f"im{index}"] = mask
    return tmp_path, masks


def test_sweep_equals_each_threshold_separately(seed_data):
    cam_dir, masks = seed_data
    thresholds = [0.0, 0.1, 0.2, 0.3, 0.35, 0.4, 0.6]
    result = evaluate_seeds(cam_dir, masks.__getitem__, sorted(masks), NUM_FOREGROUND + 1, thresholds)
    expected = [brute_force_miou(cam_dir, masks, t, NUM_FOREGROUND + 1) for t in thresholds]
    assert result["thresholds"] == thresholds and result["num_images"] == 3
    assert result["miou"] == pytest.approx(expected, abs=1e-9)
    best = int(np.argmax(expected))
    assert result["best_index"] == best and result["best_threshold"] == thresholds[best]
    assert 0 < best < len(thresholds) - 1
    assert result["best_metrics"]["mIoU"] == pytest.approx(expected[best], abs=1e-9)
    assert len(result["best_metrics"]["per_class"]) == NUM_FOREGROUND + 1


def test_single_threshold_runs_agree_with_the_sweep(seed_data):
    cam_dir, masks = seed_data
    thresholds = [0.05, 0.25, 0.45]
    sweep = evaluate_seeds(cam_dir, masks.__getitem__, sorted(masks), NUM_FOREGROUND + 1, thresholds)
    for threshold, miou in zip(thresholds, sweep["miou"]):
        single = evaluate_seeds(cam_dir, masks.__getitem__, sorted(masks), NUM_FOREGROUND + 1, [threshold])
        assert single["miou"] == [miou]


def test_evaluate_seeds_errors_name_the_file(seed_data):
    cam_dir, masks = seed_data
    with pytest.raises(ValueError, match="missing.npz"):
        evaluate_seeds(cam_dir, masks.__getitem__, ["missing"], NUM_FOREGROUND + 1, [0.1])
    with pytest.raises(ValueError, match="im0"):
        evaluate_seeds(cam_dir, lambda name: np.zeros((2, 2)), ["im0"], NUM_FOREGROUND + 1, [0.1])
    with pytest.raises(ValueError, match="CAM classes"):
        evaluate_seeds(cam_dir, masks.__getitem__, ["im0"], NUM_FOREGROUND + 2, [0.1])
    with pytest.raises(ValueError, match="duplicate"):
        evaluate_seeds(cam_dir, masks.__getitem__, ["im0"], NUM_FOREGROUND + 1, [0.1, 0.1])


def test_parse_thresholds():
    assert parse_thresholds("0:0.6:0.05") == [round(0.05 * i, 10) for i in range(13)]
    assert parse_thresholds("0:0.6:0.05")[3] == 0.15
    assert parse_thresholds("0.1:0.35:0.1") == [0.1, 0.2, 0.3]  # stop off the grid: not included
    assert parse_thresholds("0.1, 0.25,0.3") == [0.1, 0.25, 0.3]
    assert parse_thresholds("0.2") == [0.2]
    for bad, message in [
        ("", "empty"),
        ("0:1", "start:stop:step"),
        ("0:1:0", "step"),
        ("0.5:0.1:0.1", "stop < start"),
        ("0.1,abc", "abc"),
        ("0.1,0.1", "duplicate"),
        ("0:nan:0.1", "non-finite"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_thresholds(bad)


def test_table_and_plot(seed_data, tmp_path):
    cam_dir, masks = seed_data
    names = ["bg", "a", "b", "c", "d"]
    result = evaluate_seeds(cam_dir, masks.__getitem__, sorted(masks), 5, [0.1, 0.3, 0.5], class_names=names)
    table = format_seed_table(result)
    marked = [line for line in table.splitlines() if line.endswith(" *")]
    assert len(marked) == 1 and f"{result['best_threshold']:.4g}" in marked[0]
    assert all(f"\n{name} " in table for name in names)
    path = plot_seed_curve(result, tmp_path / "plots" / "seeds.png")
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (600, 400)
    assert not math.isnan(result["miou"][result["best_index"]])
