"""Pseudo labels: threshold rule, ignore band, palette PNGs, CRF availability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.wsss import crf as crf_module
from protoseg.wsss import pseudo_label
from protoseg.wsss.cam_inference import cam_path, save_cam
from protoseg.wsss.pseudo_label import make_pseudo_label, resolve_ignore_band, write_pseudo_labels

PALETTE = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]


def brute_force_label(cams, class_indices, threshold, band):
    """Per-pixel loop: argmax(cat(t, cams)) mapped to labels, 255 inside [low, high)."""
    _, height, width = cams.shape
    label = np.zeros((height, width), dtype=np.uint8)
    for y in range(height):
        for x in range(width):
            scores = [threshold] + [float(value) for value in cams[:, y, x]]
            best = int(np.argmax(scores))
            label[y, x] = 0 if best == 0 else class_indices[best - 1] + 1
            maximum = max(scores[1:], default=0.0)
            if band is not None and band[0] <= maximum < band[1]:
                label[y, x] = 255
    return label


def test_labels_and_ignore_band_match_brute_force():
    generator = torch.Generator().manual_seed(0)
    cams = torch.rand(2, 9, 8, generator=generator).numpy()
    cams[:, 0, 0] = [0.25, 0.25]  # tie with the threshold -> background; tie between classes -> first
    cams[:, 0, 1] = [0.75, 0.75]
    class_indices = np.array([1, 3])
    for band in [None, (0.2, 0.45), (0.25, 0.25)]:
        label = make_pseudo_label(cams, class_indices, 0.25, ignore_band=band)
        assert label.dtype == np.uint8 and label.shape == (9, 8)
        np.testing.assert_array_equal(label, brute_force_label(cams, class_indices, 0.25, band))
    unbanded = make_pseudo_label(cams, class_indices, 0.25, ignore_band=None)
    assert unbanded[0, 0] == 0 and unbanded[0, 1] == 2
    assert set(np.unique(unbanded)) <= {0, 2, 4}


def test_auto_band_and_band_validation():
    assert resolve_ignore_band(0.3) == pytest.approx((0.25, 0.4))
    assert resolve_ignore_band(0.02, "auto") == pytest.approx((0.0, 0.12))
    assert resolve_ignore_band(0.3, None) is None
    cams = np.array([[[0.24, 0.25, 0.3, 0.39, 0.4]]], dtype=np.float32)
    label = make_pseudo_label(cams, [0], 0.3)
    assert label.tolist() == [[0, 255, 255, 255, 1]]
    with pytest.raises(ValueError, match="low <= high"):
        resolve_ignore_band(0.3, (0.5, 0.1))
    with pytest.raises(ValueError, match="ignore_band"):
        resolve_ignore_band(0.3, "wide")
    with pytest.raises(ValueError, match="threshold"):
        make_pseudo_label(cams, [0], -0.1)


def test_image_without_tags_is_background():
    label = make_pseudo_label(np.zeros((0, 3, 4), np.float32), [], 0.1, ignore_band=None)
    assert label.shape == (3, 4) and not label.any()
    banded = make_pseudo_label(np.zeros((0, 3, 4), np.float32), [], 0.0, ignore_band=(0.0, 0.05))
    assert np.all(banded == 255)  # max score 0 lies in [0, 0.05)


def write_cams(cam_dir, count=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    stored = {}
    for index in range(count):
        tags = torch.tensor([1.0, 0.0, 1.0, float(index % 2)])
        cam = torch.rand(4, 5, 6 + index, generator=generator) * tags[:, None, None]
        save_cam(cam_path(cam_dir, f"img{index}"), cam, tags)
        stored[f"img{index}"] = (cam.numpy().astype(np.float16).astype(np.float32), tags.numpy())
    return stored


def test_write_pseudo_labels_palette_pngs(tmp_path):
    stored = write_cams(tmp_path / "cams")
    summary = write_pseudo_labels(tmp_path / "cams", tmp_path / "labels", 0.3, PALETTE, progress=False)
    assert summary["written"] == 3 and summary["ignore_band"] == pytest.approx((0.25, 0.4))
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["img0.png", "img1.png", "img2.png"]
    ignored = total = 0
    for name, (cam, tags) in stored.items():
        with Image.open(tmp_path / "labels" / f"{name}.png") as image:
            assert image.mode == "P"
            palette = np.array(image.getpalette()[: 256 * 3]).reshape(-1, 3)
            label = np.array(image)
        indices = np.flatnonzero(tags > 0)
        expected = brute_force_label(cam[indices], indices, 0.3, (0.25, 0.4))
        np.testing.assert_array_equal(label, expected)
        np.testing.assert_array_equal(palette[:5], PALETTE)
        assert palette[255].tolist() == [224, 224, 192]
        ignored += int((expected == 255).sum())
        total += expected.size
    assert summary["ignored_fraction"] == pytest.approx(ignored / total)


def test_write_pseudo_labels_errors(tmp_path):
    write_cams(tmp_path / "cams", count=1)
    with pytest.raises(ValueError, match="palette"):
        write_pseudo_labels(tmp_path / "cams", tmp_path / "out", 0.3, PALETTE[:3], progress=False)
    with pytest.raises(ValueError, match="nothing.npz"):
        write_pseudo_labels(
            tmp_path / "cams", tmp_path / "out", 0.3, PALETTE, names=["nothing"], progress=False
        )
    with pytest.raises(ValueError, match="no CAM files"):
        write_pseudo_labels(tmp_path / "out", tmp_path / "out2", 0.3, PALETTE, progress=False)


def test_crf_missing_raises_clear_runtime_error(tmp_path, monkeypatch):
    write_cams(tmp_path / "cams", count=1)
    monkeypatch.setattr(crf_module, "dense_crf_available", lambda: False)
    with pytest.raises(RuntimeError, match="pip install pydensecrf2"):
        write_pseudo_labels(
            tmp_path / "cams", tmp_path / "out", 0.3, PALETTE, crf=True,
            image_loader=lambda name: np.zeros((5, 6, 3), np.uint8), progress=False,
        )
    assert not (tmp_path / "out").exists()
    with pytest.raises(RuntimeError, match="pydensecrf2"):
        crf_module.refine_with_crf(np.zeros((2, 2, 3), np.uint8), np.ones((2, 2, 2)))
    assert pseudo_label.require_dense_crf is crf_module.require_dense_crf


@pytest.mark.skipif(
    not crf_module.dense_crf_available(), reason="no dense-CRF package (pip install pydensecrf2)"
)
def test_crf_refinement_with_package(tmp_path):
    generator = torch.Generator().manual_seed(5)
    cams = torch.rand(2, 12, 14, generator=generator).numpy()
    image = (torch.rand(12, 14, 3, generator=generator) * 255).to(torch.uint8).numpy()
    # Zero mean-field iterations: the CRF returns softmax(-unary) = the normalised input, so the label
    # is exactly the thresholded one.
    plain = make_pseudo_label(cams, [0, 2], 0.4, ignore_band=None)
    zero_iterations = make_pseudo_label(cams, [0, 2], 0.4, None, image, {"iterations": 0})
    np.testing.assert_array_equal(zero_iterations, plain)
    # Left half red, right half blue; CAM noisy but right on average: the CRF cleans it up.
    image = np.zeros((12, 14, 3), np.uint8)
    image[:, :7] = (255, 0, 0)
    image[:, 7:] = (0, 0, 255)
    cams = np.full((1, 12, 14), 0.2, np.float32)
    cams[0, :, :7] = 0.8
    cams[0, 3, 2] = 0.1  # wrong pixel inside the object
    cams[0, 5, 10] = 0.9  # wrong pixel in the background
    refined = make_pseudo_label(cams, [0], 0.5, None, image)
    expected = np.zeros((12, 14), np.uint8)
    expected[:, :7] = 1
    np.testing.assert_array_equal(refined, expected)
    assert make_pseudo_label(cams, [0], 0.5, None)[3, 2] == 0
