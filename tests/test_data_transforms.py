"""Paired transforms: image and mask stay aligned, padding, eval normalisation, seeding."""

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.data.transforms import (
    ColorJitter,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    build_transforms,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# the 8 corners of the RGB cube: any two differ by 1.0 in at least one channel
CORNERS = np.array([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)], dtype=np.float64)


def block_scene(seed, height=40, width=56, block=6):
    """A label map of random rectangular blocks and an image whose colour encodes the label."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 8, (height // block + 1, width // block + 1))
    labels = np.kron(coarse, np.ones((block, block), dtype=np.int64))[:height, :width]
    image = (CORNERS[labels] * 255).astype(np.uint8)
    return Image.fromarray(image), labels.astype(np.uint8)


def decode(image_tensor):
    """Un-normalise (float64) and find the nearest colour corner; also its max-channel distance."""
    pixels = image_tensor.double().permute(1, 2, 0).numpy() * np.array(STD) + np.array(MEAN)
    distance = np.abs(pixels[:, :, None, :] - CORNERS[None, None]).max(-1)
    return distance.argmin(-1), distance.min(-1)


def test_training_transforms_keep_image_and_mask_aligned():
    transform = build_transforms(train=True, crop_size=(48, 48), scale_range=(0.5, 2.0), flip=True)
    checked = 0
    for seed in range(40):
        image, labels = block_scene(seed)
        image_out, mask_out = transform(image, labels, torch.Generator().manual_seed(seed))
        assert image_out.shape == (3, 48, 48) and mask_out.shape == (48, 48)
        assert image_out.dtype == torch.float32 and mask_out.dtype == torch.int64
        padded = mask_out.numpy() == 255
        # padding: image exactly 0 (the mean after normalisation) where and only where the mask is 255
        assert np.array_equal(padded, (image_out == 0).all(0).numpy())
        label, distance = decode(image_out)
        # a pixel within 0.05 of a corner colour has >= 95% bilinear weight on that class, so the
        # nearest source pixel (weight >= 25%) must be of that class too
        pure = (distance < 0.05) & ~padded
        assert np.array_equal(label[pure], mask_out.numpy()[pure])
        checked += pure.sum()
    assert checked > 0.5 * 40 * 48 * 48 * 0.5  # most pixels are unblended


def count_misaligned(image_tensor, mask):
    label, distance = decode(image_tensor)
    pure = distance < 0.05
    return int((label[pure] != mask[pure]).sum()), int(pure.sum())


def test_alignment_check_catches_a_half_pixel_shift():
    """The check above is sensitive: torch's legacy 'nearest' (half-pixel shift) fails it at 0.6x."""
    legacy_errors, our_errors, pure_total = 0, 0, 0
    normalize = Normalize(MEAN, STD)
    for seed in range(5):
        image, labels = block_scene(seed, block=3)
        scaled_image, scaled_mask = RandomScale((0.6, 0.6))(image, labels, torch.Generator().manual_seed(0))
        size = tuple(scaled_mask.shape)
        assert size == (24, 34)
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
        bilinear = torch.nn.functional.interpolate(
            tensor[None], size=size, mode="bilinear", align_corners=False
        )
        assert torch.equal(scaled_image, bilinear[0])
        legacy = torch.nn.functional.interpolate(torch.from_numpy(labels)[None, None].float(), size=size)
        normalised = normalize(scaled_image)[0]
        errors, pure = count_misaligned(normalised, scaled_mask.numpy())
        our_errors += errors
        pure_total += pure
        legacy_errors += count_misaligned(normalised, legacy[0, 0].long().numpy())[0]
    assert our_errors == 0 and pure_total > 1000
    assert legacy_errors > 100


def test_eval_transform_only_normalises():
    image, labels = block_scene(1)
    image_out, mask_out = build_transforms(train=False)(image, labels, None)
    expected = (np.array(image, dtype=np.float64) / 255 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(image_out.permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert torch.equal(mask_out, torch.from_numpy(labels.astype(np.int64)))


def test_same_generator_seed_same_output_and_mask_optional():
    image, labels = block_scene(2)
    transform = build_transforms(train=True, crop_size=(32, 32), color_jitter=0.3)
    first = transform(image, labels, torch.Generator().manual_seed(11))
    second = transform(image, labels, torch.Generator().manual_seed(11))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    image_only, no_mask = transform(image, None, torch.Generator().manual_seed(11))
    assert no_mask is None and torch.equal(image_only, first[0])


def test_random_crop_is_a_window_of_the_padded_input():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 7, 9)
    mask = torch.randint(0, 5, (7, 9))
    crop = RandomCrop((5, 12))
    for _ in range(10):
        image_out, mask_out = crop(image, mask, generator)
        padded_image = torch.zeros(3, 7, 12)
        padded_image[:, :, :9] = image
        padded_mask = torch.full((7, 12), 255, dtype=torch.int64)
        padded_mask[:, :9] = mask
        matches = [
            top
            for top in range(3)
            if torch.equal(padded_image[:, top : top + 5], image_out)
            and torch.equal(padded_mask[top : top + 5], mask_out)
        ]
        assert matches


def test_random_scale_sizes_and_flip_rate():
    image = torch.rand(3, 20, 30)
    mask = torch.zeros(20, 30, dtype=torch.int64)
    generator = torch.Generator().manual_seed(0)
    heights = [RandomScale((0.5, 2.0))(image, mask, generator)[0].shape[1] for _ in range(50)]
    assert min(heights) >= 10 and max(heights) <= 40 and len(set(heights)) > 10
    ramp = torch.arange(30.0).expand(3, 20, 30)
    flips = 0
    for _ in range(400):
        image_out, mask_out = RandomHorizontalFlip()(ramp, torch.arange(30).expand(20, 30), generator)
        flipped = bool(image_out[0, 0, 0] == 29)
        assert torch.equal(mask_out[0].float(), image_out[0, 0])
        flips += flipped
    assert 140 < flips < 260


def test_color_jitter_changes_image_only():
    image, labels = block_scene(4)
    generator = torch.Generator().manual_seed(0)
    image_out, mask_out = ColorJitter(0.4)(image, labels, generator)
    assert torch.equal(mask_out, torch.from_numpy(labels.astype(np.int64)))
    assert image_out.min() >= 0 and image_out.max() <= 1
    identity, _ = ColorJitter(0.0)(image, labels, generator)
    assert torch.allclose(
        identity, torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255, atol=1e-6
    )
    assert not torch.allclose(image_out, identity)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="scale_range"):
        RandomScale((2.0, 1.0))
    with pytest.raises(ValueError, match="crop size"):
        RandomCrop((0, 5))
    with pytest.raises(ValueError, match="std"):
        Normalize((0.5, 0.5, 0.5), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="color_jitter"):
        ColorJitter(1.5)


def test_aspect_jitter_scales_width_and_height_by_the_drawn_ratio():
    from protoseg.data.transforms import RandomScale

    image = torch.rand(3, 40, 60)
    mask = torch.randint(0, 3, (40, 60))
    transform = RandomScale((1.5, 1.5), aspect_range=(0.81, 0.81))
    scaled, scaled_mask = transform(image, mask, torch.Generator().manual_seed(0))
    assert scaled.shape[-2:] == (round(40 * 1.5 / 0.9), round(60 * 1.5 * 0.9)) == scaled_mask.shape
    assert set(scaled_mask.unique().tolist()) <= {0, 1, 2}
    # without aspect jitter one number is drawn, as before the option existed
    generator = torch.Generator().manual_seed(3)
    RandomScale((0.5, 2.0))(image, mask, generator)
    reference = torch.Generator().manual_seed(3)
    torch.rand((), generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())


def test_brightness_shift_adds_one_integer_to_the_8_bit_image_and_clips():
    from protoseg.data.transforms import RandomBrightnessShift

    image = torch.tensor([0.0, 10 / 255, 250 / 255, 1.0]).view(1, 1, 4).expand(3, 1, 4).clone()
    shifts = set()
    for seed in range(40):
        shifted, _ = RandomBrightnessShift(10)(image, None, torch.Generator().manual_seed(seed))
        offset = round(float(shifted[0, 0, 1] * 255)) - 10
        assert -10 <= offset <= 10
        expected = ((image * 255).round() + offset).clamp(0, 255) / 255
        torch.testing.assert_close(shifted, expected, rtol=0, atol=1e-6)
        shifts.add(offset)
    assert len(shifts) > 10


def test_min_side_resize_and_the_released_training_transforms():
    from protoseg.data.transforms import RandomBrightnessShift, ResizeMinSide, build_transforms

    image, mask = torch.rand(3, 30, 60), torch.zeros(30, 60, dtype=torch.long)
    resized, resized_mask = ResizeMinSide(45)(image, mask)
    assert resized.shape[-2:] == (45, 90) == resized_mask.shape
    steps = build_transforms(
        True, (32, 32), (0.5, 2.0), aspect_range=(0.9, 1.1), brightness_shift=10, min_side=40
    )
    kinds = [type(step).__name__ for step in steps.transforms]
    assert kinds == [
        "ResizeMinSide",
        "RandomScale",
        "RandomHorizontalFlip",
        "RandomBrightnessShift",
        "Normalize",
        "RandomCrop",
    ]
    assert isinstance(steps.transforms[3], RandomBrightnessShift)


@pytest.mark.parametrize("seed", range(6))
def test_the_frame_maps_each_pixel_to_where_it_came_from(seed):
    """An extra map holding each pixel's own original coordinates goes through the training transforms;
    the frame must map every transformed pixel's centre onto the coordinates it carries."""
    from protoseg.data.transforms import Frame

    height, width = 37, 53
    transform = build_transforms(
        train=True,
        crop_size=(40, 48),
        scale_range=(0.6, 1.7),
        flip=True,
        aspect_range=(0.8, 1.25),
        min_side=45,
    )
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    coordinates = torch.stack([ys, xs, torch.ones_like(ys)]).float()
    image = np.zeros((height, width, 3), dtype=np.uint8)
    frame = Frame(height, width)
    generator = torch.Generator().manual_seed(seed)
    _, _, carried = transform(image, None, generator, extra=coordinates, frame=frame)
    out_y, out_x = torch.meshgrid(
        torch.arange(carried.shape[1]) + 0.5, torch.arange(carried.shape[2]) + 0.5, indexing="ij"
    )
    mapped_y, mapped_x = frame.sy * out_y + frame.oy, frame.sx * out_x + frame.ox
    # away from the borders, where bilinear resampling clamps the coordinates and padding starts
    inside = (
        (carried[2] > 0.999)
        & (mapped_y > 1.5) & (mapped_y < height - 1.5) & (mapped_x > 1.5) & (mapped_x < width - 1.5)
    )  # fmt: skip
    assert inside.sum() > 100
    assert torch.allclose(carried[0][inside], mapped_y[inside].float(), atol=1e-3)
    assert torch.allclose(carried[1][inside], mapped_x[inside].float(), atol=1e-3)
    # padding maps outside the original image
    padded = carried[2] < 1e-6
    outside = (mapped_y >= height) | (mapped_x >= width) | (mapped_y < 0) | (mapped_x < 0)
    assert torch.equal(padded, outside)
    # the frame does not change the random draws
    again = transform(image, None, torch.Generator().manual_seed(seed), extra=coordinates)
    assert torch.equal(again[2], carried)


def test_the_frame_of_the_eval_transform_is_the_identity():
    from protoseg.data.transforms import Frame

    frame = Frame(20, 30)
    build_transforms(train=False)(np.zeros((20, 30, 3), dtype=np.uint8), None, frame=frame)
    assert frame.as_tensor().tolist() == [1.0, 0.0, 1.0, 0.0, 20.0, 30.0]
