"""Paired image / mask transforms with explicit randomness.

Every transform is called as ``transform(image, mask, generator) -> (image, mask)``: ``image`` a
PIL image, a uint8 array (H, W, 3) or a float tensor (3, H, W) in [0, 1] (normalised after
``Normalize``); ``mask`` a PIL image, array or int64 tensor (H, W), or ``None`` (images only).
Random draws come from ``generator`` (a ``torch.Generator``; ``None`` uses the global torch RNG),
so a sample's augmentation is a function of its seed alone. Images are resampled bilinearly,
masks with exact nearest neighbour so both stay on the same pixel grid.

:class:`Compose` also carries an optional extra float map ``(K, H, W)`` (EPS's saliency map) through the
geometric transforms, resampled bilinearly like the image and padded with 0; the photometric ones
(``photometric = True``: colour jitter, brightness shift, normalisation) leave it alone. The random
draws are the same with or without it.

:class:`Frame` records where the pixels of the transformed image come from in the original image (the
geometric transforms update it when :class:`Compose` is given one): OAA accumulates each image's
attention maps in the original image's frame across differently augmented views.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..ops.labels import IGNORE_INDEX

Tensor = torch.Tensor


def to_image_tensor(image: Image.Image | np.ndarray | Tensor) -> Tensor:
    """A float32 tensor (3, H, W): PIL / uint8 inputs scaled to [0, 1], float tensors kept."""
    if isinstance(image, Tensor):
        if image.dtype == torch.uint8:
            return image.float().div_(255.0)
        return image.float()
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {array.shape}")
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = array.copy()
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return tensor.float().div_(255.0) if array.dtype == np.uint8 else tensor.float()


def to_mask_tensor(mask: Image.Image | np.ndarray | Tensor | None) -> Tensor | None:
    """An int64 tensor (H, W) of class indices, or ``None``."""
    if mask is None:
        return None
    if isinstance(mask, Tensor):
        return mask.long()
    return torch.from_numpy(np.array(mask, dtype=np.int64))


class Frame:
    """The original-image coordinates of a transformed image's pixels: ``y0 = sy * y + oy`` and
    ``x0 = sx * x + ox`` in continuous pixel coordinates (pixel ``i`` spans ``[i, i + 1)``), and the
    original ``height`` x ``width``. Starts as the identity; the geometric transforms compose their own
    mapping into it (resize: ``s *= before / after``; horizontal flip of width W: ``ox += sx W``,
    ``sx = -sx``; crop at ``(top, left)``: ``oy += sy top``, ``ox += sx left``; padding at the bottom /
    right moves nothing). Pixels that map outside ``[0, height) x [0, width)`` are padding.
    """

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = int(height), int(width)
        self.sy, self.oy, self.sx, self.ox = 1.0, 0.0, 1.0, 0.0

    def resize(self, before: Sequence[int], after: Sequence[int]) -> None:
        self.sy *= before[0] / after[0]
        self.sx *= before[1] / after[1]

    def flip(self, width: int) -> None:
        self.ox += self.sx * width
        self.sx = -self.sx

    def crop(self, top: int, left: int) -> None:
        self.oy += self.sy * top
        self.ox += self.sx * left

    def as_tensor(self) -> Tensor:
        """float32 ``(6,)``: ``[sy, oy, sx, ox, height, width]`` (a sample's ``frame``)."""
        return torch.tensor(
            [self.sy, self.oy, self.sx, self.ox, self.height, self.width], dtype=torch.float32
        )

    def __repr__(self) -> str:
        mapping = f"y0 = {self.sy:g} y + {self.oy:g}, x0 = {self.sx:g} x + {self.ox:g}"
        return f"Frame({mapping}, {self.height}x{self.width})"


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


class Compose:
    """Apply transforms in order after converting the inputs to tensors."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(
        self,
        image,
        mask=None,
        generator: torch.Generator | None = None,
        extra: Tensor | None = None,
        frame: Frame | None = None,
    ):
        """``(image, mask)``, or ``(image, mask, extra)`` when ``extra`` (float ``(K, H, W)`` at the
        image's size) is given. ``frame`` (a :class:`Frame` of the input image), when given, is updated
        in place by the geometric transforms."""
        image, mask = to_image_tensor(image), to_mask_tensor(mask)
        if extra is None:
            for transform in self.transforms:
                image, mask = self._apply(transform, image, mask, generator, frame)
            return image, mask
        extra = torch.as_tensor(extra, dtype=torch.float32)
        if extra.dim() != 3 or extra.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"the extra map must be (K, H, W) at the image's size {tuple(image.shape[-2:])}, "
                f"got shape {tuple(extra.shape)}"
            )
        channels = image.shape[0]
        for transform in self.transforms:
            if getattr(transform, "photometric", False):
                image, mask = transform(image, mask, generator)
            else:  # resampled, flipped and cropped as extra channels of the image
                stacked, mask = self._apply(transform, torch.cat([image, extra]), mask, generator, frame)
                image, extra = stacked[:channels], stacked[channels:]
        return image, mask, extra

    @staticmethod
    def _apply(transform, image, mask, generator, frame: Frame | None):
        if frame is None or getattr(transform, "photometric", False):
            return transform(image, mask, generator)
        return transform(image, mask, generator, frame=frame)

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class RandomScale:
    """Resize by a factor drawn uniformly from ``scale_range`` (image bilinear, mask nearest).

    With ``aspect_range`` (the release's ``random_resize``), an aspect ratio a is also drawn uniformly
    and the width is scaled by ``scale * sqrt(a)``, the height by ``scale / sqrt(a)``; the default
    ``(1, 1)`` draws nothing more.
    """

    def __init__(
        self, scale_range: Sequence[float] = (0.5, 2.0), aspect_range: Sequence[float] = (1.0, 1.0)
    ) -> None:
        low, high = float(scale_range[0]), float(scale_range[1])
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {tuple(scale_range)}")
        aspect_low, aspect_high = float(aspect_range[0]), float(aspect_range[1])
        if not 0 < aspect_low <= aspect_high:
            raise ValueError(f"aspect_range must satisfy 0 < low <= high, got {tuple(aspect_range)}")
        self.scale_range = (low, high)
        self.aspect_range = (aspect_low, aspect_high)

    def __call__(self, image, mask=None, generator=None, frame: Frame | None = None):
        image, mask = to_image_tensor(image), to_mask_tensor(mask)
        scale = _uniform(generator, *self.scale_range)
        height, width = image.shape[-2:]
        if self.aspect_range == (1.0, 1.0):
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
        else:
            aspect = _uniform(generator, *self.aspect_range)
            size = (max(1, round(height * scale / aspect**0.5)), max(1, round(width * scale * aspect**0.5)))
        if size == (height, width):
            return image, mask
        if frame is not None:
            frame.resize((height, width), size)
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if mask is not None:
            # nearest-exact samples at pixel centres, the same grid as bilinear with align_corners=False
            mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
        return image, mask

    def __repr__(self) -> str:
        return f"RandomScale({self.scale_range}, aspect_range={self.aspect_range})"


class ResizeMinSide:
    """Resize so that the shorter side is ``min_side`` (the release's ``resize`` of ADE20K images
    before its random rescaling; image bilinear, mask nearest)."""

    def __init__(self, min_side: int) -> None:
        if min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {min_side}")
        self.min_side = int(min_side)

    def __call__(self, image, mask=None, generator=None, frame: Frame | None = None):
        image, mask = to_image_tensor(image), to_mask_tensor(mask)
        height, width = image.shape[-2:]
        factor = self.min_side / min(height, width)
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        if size == (height, width):
            return image, mask
        if frame is not None:
            frame.resize((height, width), size)
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if mask is not None:
            mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
        return image, mask

    def __repr__(self) -> str:
        return f"ResizeMinSide({self.min_side})"


class RandomBrightnessShift:
    """Add one integer in ``[-shift, shift]`` to every channel of the 8-bit image (the release's
    ``random_brightness``: round, clip to [0, 255]). Acts on the [0, 1] image before ``Normalize``."""

    photometric = True  # acts on the image only (Compose keeps extra maps out of it)

    def __init__(self, shift: int) -> None:
        if not 0 <= shift <= 255:
            raise ValueError(f"brightness shift must be in [0, 255], got {shift}")
        self.shift = int(shift)

    def __call__(self, image, mask=None, generator=None):
        image, mask = to_image_tensor(image), to_mask_tensor(mask)
        offset = int(torch.randint(-self.shift, self.shift + 1, (), generator=generator))
        image = ((image * 255.0).round() + offset).clamp_(0.0, 255.0) / 255.0
        return image, mask

    def __repr__(self) -> str:
        return f"RandomBrightnessShift({self.shift})"


class RandomHorizontalFlip:
    """Mirror image and mask left-right with probability ``probability``."""

    def __init__(self, probability: float = 0.5) -> None:
        self.probability = probability

    def __call__(self, image, mask=None, generator=None, frame: Frame | None = None):
        image, mask = to_image_tensor(image), to_mask_tensor(mask)
        if float(torch.rand((), generator=generator)) < self.probability:
            if frame is not None:
                frame.flip(image.shape[-1])
            image = image.flip(-1)
            mask = mask.flip(-1) if mask is not None else None
        return image, mask

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip({self.probability})"


class ColorJitter:
    """Random brightness, contrast and saturation, factors in ``[1 - strength, 1 + strength]``.

    Acts on the image only, which must still be in [0, 1] (before ``Normalize``).
    """

    photometric = True  # acts on the image only (Compose keeps extra maps out of it)

    def __init__(self, strength: float) -> None:
        if not 0 <= strength < 1:
            raise ValueError(f"color_jitter strength must be in [0, 1), got {strength}")
        self.strength = strength

    def __call__(self, image, mask=None, generator=None):
        image, mask = to_image_tensor(image), to_mask_tensor(mask)
        low, high = 1 - self.strength, 1 + self.strength
        brightness, contrast, saturation = (_uniform(generator, low, high) for _ in range(3))
        image = image * brightness
        grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
        image = (image - grey.mean()) * contrast + grey.mean()
        grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
        image = (image - grey) * saturation + grey
        return image.clamp_(0.0, 1.0), mask

    def __repr__(self) -> str:
        return f"ColorJitter({self.strength})"


class Normalize:
    """``(image - mean) / std`` per channel."""

    photometric = True  # acts on the image only (Compose keeps extra maps out of it)

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values, std > 0; got mean={mean}, std={std}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image, mask=None, generator=None):
        image, mask = to_image_tensor(image), to_mask_tensor(mask)
        return (image - self.mean) / self.std, mask

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class RandomCrop:
    """Crop ``(height, width)`` at a random offset, padding bottom / right first if smaller.

    The image is padded with ``image_fill`` (0: the mean colour when placed after ``Normalize``),
    channels beyond the third (extra maps carried by :class:`Compose`) with 0, the mask with
    ``ignore_index``.
    """

    def __init__(
        self, size: Sequence[int], image_fill: float = 0.0, ignore_index: int = IGNORE_INDEX
    ) -> None:
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"crop size must be (height, width) >= 1, got {size}")
        self.size = (int(size[0]), int(size[1]))
        self.image_fill = image_fill
        self.ignore_index = ignore_index

    def __call__(self, image, mask=None, generator=None, frame: Frame | None = None):
        image, mask = to_image_tensor(image), to_mask_tensor(mask)
        crop_height, crop_width = self.size
        height, width = image.shape[-2:]
        pad_bottom, pad_right = max(0, crop_height - height), max(0, crop_width - width)
        if pad_bottom or pad_right:
            padding = (0, pad_right, 0, pad_bottom)
            padded = F.pad(image[:3], padding, value=self.image_fill)
            if image.shape[0] > 3:  # extra maps (Compose's) are padded with 0
                padded = torch.cat([padded, F.pad(image[3:], padding, value=0.0)])
            image = padded
            if mask is not None:
                mask = F.pad(mask, (0, pad_right, 0, pad_bottom), value=self.ignore_index)
            height, width = image.shape[-2:]
        top = int(torch.randint(height - crop_height + 1, (), generator=generator))
        left = int(torch.randint(width - crop_width + 1, (), generator=generator))
        if frame is not None:
            frame.crop(top, left)
        image = image[:, top : top + crop_height, left : left + crop_width]
        if mask is not None:
            mask = mask[top : top + crop_height, left : left + crop_width]
        return image.contiguous(), mask.contiguous() if mask is not None else None

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


def build_transforms(
    train: bool,
    crop_size: Sequence[int] | None = None,
    scale_range: Sequence[float] | None = (0.5, 2.0),
    flip: bool = True,
    color_jitter: float = 0.0,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    aspect_range: Sequence[float] = (1.0, 1.0),
    brightness_shift: int = 0,
    min_side: int | None = None,
) -> Compose:
    """Training: [ResizeMinSide] -> [ColorJitter] -> [RandomScale (with aspect jitter)] -> [flip] ->
    [RandomBrightnessShift] -> Normalize -> [RandomCrop with padding].

    Evaluation (``train=False``): Normalize only, at the image's own size.
    """
    if not train:
        return Compose([Normalize(mean, std)])
    steps: list = []
    if min_side is not None:
        steps.append(ResizeMinSide(min_side))
    if color_jitter > 0:
        steps.append(ColorJitter(color_jitter))
    if scale_range is not None and (tuple(scale_range) != (1.0, 1.0) or tuple(aspect_range) != (1.0, 1.0)):
        steps.append(RandomScale(scale_range, aspect_range))
    if flip:
        steps.append(RandomHorizontalFlip())
    if brightness_shift > 0:
        steps.append(RandomBrightnessShift(brightness_shift))
    steps.append(Normalize(mean, std))
    if crop_size is not None:
        steps.append(RandomCrop(crop_size))
    return Compose(steps)
