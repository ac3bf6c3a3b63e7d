"""OAA's accumulation: maps of augmented views resampled into the original image (against a float64
bilinear reference and the training transforms themselves), the quality filters, the fusion rule, and the
per-image store (atomic files, iteration stamps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protoseg.data.transforms import Frame, build_transforms
from protoseg.ops.image_frame import to_image_grid
from protoseg.ops.oaa import attention_maps, fuse, passes_filter, quantise
from protoseg.prototypes import AttentionStore
from protoseg.prototypes.attention_store import map_path, read_maps


def bilinear_reference(maps: np.ndarray, frame, image_size, grid) -> tuple[np.ndarray, np.ndarray]:
    """float64, one loop per cell: the cell centre of the original mapped into the transformed image and
    sampled bilinearly from the maps (align_corners=False, clamped at the borders)."""
    sy, oy, sx, ox, original_height, original_width = [float(v) for v in frame]
    channels, h, w = maps.shape
    height, width = image_size
    out = np.zeros((channels, *grid))
    covered = np.zeros(grid, dtype=bool)
    for i in range(grid[0]):
        for j in range(grid[1]):
            y = ((i + 0.5) * original_height / grid[0] - oy) / sy
            x = ((j + 0.5) * original_width / grid[1] - ox) / sx
            if not (0 <= y < height and 0 <= x < width):
                continue
            covered[i, j] = True
            u = min(max(y * h / height - 0.5, 0.0), h - 1.0)
            v = min(max(x * w / width - 0.5, 0.0), w - 1.0)
            u0, v0 = int(np.floor(u)), int(np.floor(v))
            u1, v1 = min(u0 + 1, h - 1), min(v0 + 1, w - 1)
            a, b = u - u0, v - v0
            out[:, i, j] = (
                (1 - a) * (1 - b) * maps[:, u0, v0]
                + (1 - a) * b * maps[:, u0, v1]
                + a * (1 - b) * maps[:, u1, v0]
                + a * b * maps[:, u1, v1]
            )
    return out, covered


def test_identity_frames_give_the_maps_back():
    maps = torch.rand(2, 3, 7, 5)
    frames = torch.tensor([[1.0, 0.0, 1.0, 0.0, 56.0, 40.0]] * 2)
    resampled, covered = to_image_grid(maps, frames, (56, 40), (7, 5))
    assert covered.all()
    assert torch.allclose(resampled, maps, atol=1e-6)
    flipped = torch.tensor([[1.0, 0.0, -1.0, 40.0, 56.0, 40.0]] * 2)
    resampled, _ = to_image_grid(maps, flipped, (56, 40), (7, 5))
    assert torch.allclose(resampled, maps.flip(-1), atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_resampling_matches_a_float64_bilinear_reference(seed):
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(3, 2, 6, 8, generator=generator)
    frames = []
    for _ in range(3):  # rescaled, flipped or not, cropped, sometimes padded
        s = float(torch.empty(()).uniform_(0.5, 1.6, generator=generator))
        flip = bool(torch.rand((), generator=generator) < 0.5)
        height, width = int(torch.randint(30, 70, (), generator=generator)), int(torch.randint(30, 70, ()))
        top, left = float(torch.randint(0, 10, (), generator=generator)), float(torch.randint(0, 10, ()))
        sx = -s if flip else s
        frames.append([s, s * top, sx, (s * width if flip else 0.0) + sx * left, height, width])
    frames = torch.tensor(frames)
    resampled, covered = to_image_grid(maps, frames, (48, 64), (9, 11))
    for b in range(3):
        expected, expected_covered = bilinear_reference(
            maps[b].double().numpy(), frames[b], (48, 64), (9, 11)
        )
        assert np.array_equal(covered[b, 0].numpy(), expected_covered)
        np.testing.assert_allclose(resampled[b].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_a_map_of_the_original_survives_the_training_transforms(seed):
    """Draw a smooth map over a 64 x 80 original, carry it through the real training transforms (scale,
    flip, crop, padding), pool it to a stride-8 CAM grid and resample back: it matches the original map
    where the crop saw the image (the pooling blurs by less than a cell)."""
    height, width, grid = 64, 80, (8, 10)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    original = (torch.sin(3 * ys + 1) * torch.cos(2 * xs) + 1.5)[None].float()
    transform = build_transforms(train=True, crop_size=(56, 56), scale_range=(0.7, 1.2), flip=True)
    frame = Frame(height, width)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    _, _, carried = transform(image, None, torch.Generator().manual_seed(seed), extra=original, frame=frame)
    cam = F.avg_pool2d(carried[None], 8)  # (1, 1, 7, 7): the training CAM at output stride 8
    resampled, covered = to_image_grid(cam, frame.as_tensor()[None], (56, 56), grid)
    truth = F.adaptive_avg_pool2d(original[None], grid)
    inside = covered[0, 0]
    assert inside.sum() >= 20
    assert (resampled[0, 0][inside] - truth[0, 0][inside]).abs().max() < 0.35
    assert (resampled[0, 0][~inside] == 0).all()


def test_attention_maps_and_quantisation_follow_the_release():
    cams = torch.tensor([[[[-1.0, 2.0], [4.0, 0.5]]]])
    maps = attention_maps(cams)
    expected = np.maximum(cams.numpy(), 0) / (4.0 + 1e-8)
    np.testing.assert_allclose(maps.numpy(), expected, rtol=1e-6)
    # float32 products rounded half to even, as cv2.imwrite stores the releases' float32 arrays
    values = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    values[:4] = torch.tensor([0.5, 1.5, 2.5, 254.5]) / 255
    expected = np.clip(np.rint(values.numpy() * np.float32(255)), 0, 255)
    assert quantise(values).tolist() == expected.tolist()
    assert quantise(torch.tensor([2.0 / 255, 1.2])).tolist() == [2, 255]


def test_filters_against_brute_force():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(20, 6, generator=generator)
    tags = (torch.rand(20, 6, generator=generator) < 0.4).float()
    passed = passes_filter(scores, tags, "top_tags")
    for b in range(20):
        order = sorted(range(6), key=lambda c: -float(scores[b, c]))
        top = set(order[: int(tags[b].sum())])
        assert [c in top for c in range(6)] == passed[b].tolist()
    assert torch.equal(passes_filter(scores, tags, "probability", 0.3), scores >= 0.3)
    with pytest.raises(ValueError, match="filter|mode"):
        passes_filter(scores, tags, "best")


def test_fusion_rule_against_the_release_logic():
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        accumulated = torch.randint(0, 256, (4, 3, 3), generator=generator, dtype=torch.uint8)
        counts = torch.randint(0, 3, (4,), generator=generator, dtype=torch.int32)
        accumulated[counts == 0] = 0
        update = torch.randint(0, 256, (4, 3, 3), generator=generator, dtype=torch.uint8)
        tagged = torch.rand(4, generator=generator) < 0.6
        passed = torch.rand(4, generator=generator) < 0.5
        final = bool(torch.rand((), generator=generator) < 0.5)
        maps, new_counts = fuse(accumulated, counts, update, tagged, passed, final)
        for c in range(4):  # the release, per tagged class
            expected, count = accumulated[c], int(counts[c])
            if tagged[c]:
                if final and count == 0:
                    expected, count = update[c], 1
                elif passed[c]:
                    expected, count = torch.maximum(accumulated[c], update[c]), count + 1
            assert torch.equal(maps[c], expected) and int(new_counts[c]) == count


def test_the_store_fuses_writes_atomically_and_skips_iterations_it_holds(tmp_path):
    folder = tmp_path / "oaa"
    store = AttentionStore(3, folder)
    store.write_meta(["a", "b"])
    update = torch.full((3, 2, 2), 10, dtype=torch.uint8)
    tagged = torch.tensor([True, False, True])
    passed = torch.tensor([True, True, False])
    assert store.apply(1, 5, update, tagged, passed, final=False)
    record = read_maps(map_path(folder, 1))
    assert record.classes.tolist() == [0] and record.counts.tolist() == [1] and record.iteration == 5
    # a repeated iteration (a resumed run) is not fused again; a later one is
    assert not store.apply(1, 5, update * 2, tagged, passed, final=False)
    assert store.apply(1, 9, update * 2, tagged, passed, final=True)
    record = read_maps(map_path(folder, 1))
    assert record.classes.tolist() == [0, 2] and record.counts.tolist() == [2, 1]
    assert record.maps[0].unique().tolist() == [20] and record.maps[1].unique().tolist() == [20]
    # a fresh store on the same folder (a resumed run) continues from the files
    again = AttentionStore(3, folder)
    assert not again.apply(1, 9, update * 3, tagged, passed, final=True)
    assert again.read(1).iteration == 9
    assert not list(folder.glob(".*.tmp"))
    assert json.loads((folder / "meta.json").read_text()) == {"num_classes": 3, "names": ["a", "b"]}
    with pytest.raises(ValueError, match="another dataset"):
        AttentionStore(3, folder).write_meta(["a", "c"])
    with pytest.raises(ValueError, match="map_size"):
        again.apply(1, 12, torch.zeros(3, 4, 4, dtype=torch.uint8), tagged, passed, final=False)
    (folder / "0000000.pt").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="0000000.pt"):
        again.read(0)
