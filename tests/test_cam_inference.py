"""Multi-scale flipped CAM inference, CAM files and resumable CAM inference runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protoseg.wsss.cam_inference import (
    cam_path,
    load_cam,
    multiscale_cam,
    run_cam_inference,
    save_cam,
)


def ramp_cam_fn(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) -> (B, 3, h, w): cam_c = image_c + column index (not flip-equivariant)."""
    columns = torch.arange(images.shape[-1], dtype=images.dtype, device=images.device)
    return images + columns


def strided_cam_fn(images: torch.Tensor) -> torch.Tensor:
    """A stride-2 CAM network stand-in with a position-dependent term and signed outputs."""
    pooled = F.avg_pool2d(images, 2, ceil_mode=True)
    columns = torch.linspace(-0.5, 1.0, pooled.shape[-1], dtype=images.dtype)
    return torch.cat([pooled[:, :1] - 0.3, pooled[:, 1:2] * columns, pooled[:, 2:] - pooled[:, 1:2]], dim=1)


def test_scale_one_with_flip_matches_hand_computed_reference():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 5, 7, generator=generator)
    tags = torch.ones(3)
    cam = multiscale_cam(ramp_cam_fn, image, tags, scales=(1.0,), flip=True)
    # f(x)[col] + flip(f(flip(x)))[col] = x[col] + col + x[col] + (W - 1 - col) = 2 x + W - 1.
    expected = 2 * image.double() + 6
    expected = expected / (expected.amax(dim=(1, 2), keepdim=True) + 1e-5)
    assert cam.dtype == torch.float32 and cam.shape == (3, 5, 7)
    torch.testing.assert_close(cam.double(), expected, rtol=1e-6, atol=1e-6)
    without_flip = multiscale_cam(ramp_cam_fn, image, tags, scales=(1.0,), flip=False)
    columns = torch.arange(7, dtype=torch.float64)
    expected = image.double() + columns
    expected = expected / (expected.amax(dim=(1, 2), keepdim=True) + 1e-5)
    torch.testing.assert_close(without_flip.double(), expected, rtol=1e-6, atol=1e-6)


def reference_multiscale(cam_fn, image, tags, scales, flip):
    """The pipeline of methods.md section 5 written out image by image, in float64."""
    height, width = image.shape[1:]
    total = torch.zeros(tags.shape[0], height, width, dtype=torch.float64)
    variants = [False, True] if flip else [False]
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        resized = F.interpolate(image[None].double(), size=size, mode="bilinear", align_corners=False)
        for flipped in variants:
            cams = cam_fn(resized.flip(-1) if flipped else resized)
            if flipped:
                cams = cams.flip(-1)
            total += F.interpolate(cams, size=(height, width), mode="bilinear", align_corners=False)[0]
    total = total.clamp_min(0)
    for c in range(tags.shape[0]):
        total[c] = total[c] / (total[c].max() + 1e-5) if tags[c] > 0 else 0.0
    return total


@pytest.mark.parametrize("flip", [True, False])
def test_multiscale_matches_reference_with_tags_restriction(flip):
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 9, 13, generator=generator)
    tags = torch.tensor([1.0, 0.0, 1.0])
    scales = (0.5, 1.0, 1.5, 2.0)
    cam = multiscale_cam(strided_cam_fn, image, tags, scales=scales, flip=flip)
    expected = reference_multiscale(strided_cam_fn, image[0], tags, scales, flip)
    torch.testing.assert_close(cam.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.all(cam[1] == 0)  # untagged class
    assert cam.min() >= 0
    # Max-normalisation: each tagged class peaks at max / (max + 1e-5) < 1.
    assert torch.all(cam[[0, 2]].amax(dim=(1, 2)) > 0.999) and cam.max() < 1


def test_constant_image_gives_flat_normalised_cams_and_no_grad():
    weight = torch.nn.Parameter(torch.tensor([2.0, 3.0]))

    def cam_fn(images):
        return images[:, :2] * weight[None, :, None, None]

    image = torch.full((3, 6, 10), 0.5)
    cam = multiscale_cam(cam_fn, image, torch.tensor([1.0, 1.0]))
    assert not cam.requires_grad
    # 4 scales x 2 flips of a constant map: class c sums to 8 * 0.5 * weight_c everywhere.
    for c, total in enumerate((8.0, 12.0)):
        expected = torch.full_like(cam[c], total / (total + 1e-5))
        torch.testing.assert_close(cam[c], expected, rtol=1e-6, atol=1e-6)


def test_bad_inputs_raise_value_error():
    image = torch.rand(3, 4, 4)
    with pytest.raises(ValueError, match="image"):
        multiscale_cam(ramp_cam_fn, torch.rand(2, 3, 4, 4), torch.ones(3))
    with pytest.raises(ValueError, match="tags"):
        multiscale_cam(ramp_cam_fn, image, torch.ones(4))
    with pytest.raises(ValueError, match="scales"):
        multiscale_cam(ramp_cam_fn, image, torch.ones(3), scales=(1.0, 0.0))


def test_save_load_round_trip_stores_only_tagged_classes(tmp_path):
    generator = torch.Generator().manual_seed(2)
    cam = torch.rand(5, 7, 6, generator=generator)
    tags = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0])
    cam = cam * tags[:, None, None]
    path = tmp_path / "sub" / "image_1.npz"
    save_cam(path, cam, tags)
    assert sorted(p.name for p in path.parent.iterdir()) == ["image_1.npz"]  # no .tmp left
    record = load_cam(path)
    assert record.num_classes == 5 and record.size == (7, 6)
    assert record.class_indices.tolist() == [1, 4] and record.cams.shape == (2, 7, 6)
    dense = record.dense()
    np.testing.assert_allclose(dense, cam.numpy(), atol=5e-4)  # float16 storage
    np.testing.assert_array_equal(dense, cam.numpy().astype(np.float16).astype(np.float32))
    with np.load(path) as data:
        assert data["cams"].dtype == np.float16


def test_load_cam_rejects_foreign_files(tmp_path):
    path = tmp_path / "other.npz"
    np.savez_compressed(path, something=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz"):
        load_cam(path)
    truncated = tmp_path / "truncated.npz"
    save_cam(truncated, torch.rand(2, 4, 4), torch.ones(2))
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(ValueError, match="truncated.npz"):
        load_cam(truncated)


class CountingCamFunction:
    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        return strided_cam_fn(images)


def make_dataset(count, generator):
    return [
        {
            "image": torch.rand(3, 6 + index, 8, generator=generator),
            "tags": (torch.rand(3, generator=generator) > 0.4).float(),
            "mask": torch.zeros(6 + index, 8, dtype=torch.int64),
            "name": f"img_{index:03d}",
        }
        for index in range(count)
    ]


def test_run_cam_inference_writes_resumes_and_shards(tmp_path):
    dataset = make_dataset(5, torch.Generator().manual_seed(3))
    cam_fn = CountingCamFunction()
    out_dir = tmp_path / "cams"
    summary = run_cam_inference(cam_fn, dataset, out_dir, scales=(1.0, 0.5), flip=True, progress=False)
    assert summary["written"] == 5 and summary["skipped"] == 0 and summary["images"] == 5
    assert cam_fn.calls == 5 * 2
    assert sorted(p.name for p in out_dir.iterdir()) == [f"img_{i:03d}.npz" for i in range(5)]
    for sample in dataset:
        record = load_cam(cam_path(out_dir, sample["name"]))
        expected = reference_multiscale(strided_cam_fn, sample["image"], sample["tags"], (1.0, 0.5), True)
        np.testing.assert_allclose(record.dense(), expected.numpy(), atol=1e-3)
        assert record.class_indices.tolist() == torch.nonzero(sample["tags"]).flatten().tolist()

    # Resume: nothing recomputed; a deleted file is recomputed alone.
    cam_path(out_dir, "img_002").unlink()
    again = run_cam_inference(cam_fn, dataset, out_dir, scales=(1.0, 0.5), progress=False)
    assert again["written"] == 1 and again["skipped"] == 4 and cam_fn.calls == 12

    # Two ranks cover the dataset exactly once between them.
    shard_dir = tmp_path / "sharded"
    counts = [
        run_cam_inference(cam_fn, dataset, shard_dir, scales=(1.0,), progress=False, rank=rank, world_size=2)
        for rank in (0, 1)
    ]
    assert [c["written"] for c in counts] == [3, 2]
    assert len(list(shard_dir.iterdir())) == 5 and not list(shard_dir.glob("*.tmp"))
    with pytest.raises(ValueError, match="rank"):
        run_cam_inference(cam_fn, dataset, shard_dir, rank=2, world_size=2, progress=False)


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    dataset = make_dataset(2, torch.Generator().manual_seed(4))

    def failing_savez(file, **arrays):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", failing_savez)
    with pytest.raises(KeyboardInterrupt):
        run_cam_inference(strided_cam_fn, dataset, tmp_path, scales=(1.0,), progress=False)
    assert list(tmp_path.iterdir()) == []
