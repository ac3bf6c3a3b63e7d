"""Saliency maps: reading a detector's maps (EPS's input) and writing synthetic ones for shapes.

EPS (Lee et al., CVPR 2021) trains its CAMs against an off-the-shelf saliency map of every training
image (the release uses PoolNet's maps: one grey-level PNG per image, ``<image id>.png``, 255 = salient).
``data.saliency_dir`` names such a folder; the training split then carries ``saliency`` ``(1, H, W)``
float32 in [0, 1], resampled with the image (bilinear) and padded with 0 (not salient).

No saliency detector is available offline, so :func:`synthetic_saliency` imitates one from the ground
truth of the built-in benchmark, with a detector's three kinds of error, all growing as ``quality``
falls from 1 (the foreground mask, edges softened by one pixel) towards 0:

- blurred edges: a Gaussian blur of ``sigma = (0.5 + 4 (1 - quality)) * size / 128`` pixels;
- missed parts: smooth random blobs remove about ``0.5 (1 - quality)`` of the foreground;
- salient background clutter: smooth random blobs cover about ``0.25 (1 - quality)`` of the background.

Confidences are then scaled by a random factor in ``[0.75 + 0.25 quality, 1]`` per image (detectors are
rarely certain). :func:`write_synthetic_saliency` writes them for every mask of a shapes dataset.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..files import atomic_write
from ..ops.labels import IGNORE_INDEX

SALIENCY_FOLDER = "SaliencyMaps"
"""Where ``make-data shapes`` writes its synthetic maps inside the dataset root."""


def read_saliency(
    path: str | Path, size: tuple[int, int], image_path: str | Path | None = None
) -> np.ndarray:
    """The saliency map at ``path`` as float32 ``(H, W)`` in [0, 1] (grey levels / 255; colour maps are
    converted to grey), checked to be ``size`` = (H, W) of its image.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file (and the image) when the map is missing,
    unreadable or of another size.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"saliency map not found: {path} "
            "(data.saliency_dir must hold one <image id>.png per training image)"
        )
    try:
        with Image.open(path) as handle:
            array = np.asarray(handle.convert("L"), dtype=np.float32) / 255.0
    except Exception as error:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise ValueError(f"cannot read saliency map {path}: {error}") from error
    if array.shape != tuple(size):
        of_image = f" of image {image_path}" if image_path is not None else ""
        raise ValueError(
            f"saliency map {path} is {array.shape[0]}x{array.shape[1]}, but the image{of_image} is "
            f"{size[0]}x{size[1]}"
        )
    return array


def _smooth_field(generator: torch.Generator, size: tuple[int, int], cells: int) -> torch.Tensor:
    """Bilinearly upsampled uniform noise on a ``(cells + 1)^2`` lattice, ``(H, W)`` in [0, 1]."""
    lattice = torch.rand(1, 1, cells + 1, cells + 1, generator=generator)
    return F.interpolate(lattice, size=size, mode="bilinear", align_corners=True)[0, 0]


def _blobs(
    generator: torch.Generator, size: tuple[int, int], where: torch.Tensor, fraction: float
) -> torch.Tensor:
    """A float mask of smooth blobs covering about ``fraction`` of the pixels of ``where``."""
    if fraction <= 0 or not bool(where.any()):
        return torch.zeros(size)
    field = _smooth_field(generator, size, int(torch.randint(3, 7, (), generator=generator)))
    threshold = torch.quantile(field[where], 1.0 - min(fraction, 1.0))
    return ((field > threshold) & where).float()


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(H, W)`` with reflect padding."""
    radius = max(1, int(round(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(image[None, None], (radius, radius, radius, radius), mode="reflect")
    padded = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(padded, kernel.view(1, 1, -1, 1))[0, 0]


def synthetic_saliency(mask: np.ndarray, seed: int | list[int], quality: float = 0.7) -> np.ndarray:
    """A detector-like saliency map of a label mask (see the module docstring for the error model).

    Args:
        mask: ``(H, W)`` class indices, 0 = background, 255 = ignore (the boundary band, taken as salient).
        seed: seeds the blobs and the confidence scale (same seed, same map).
        quality: in [0, 1]; 1 is the foreground mask with a one-pixel soft edge.

    Returns:
        float32 ``(H, W)`` in [0, 1].
    """
    if not 0.0 <= quality <= 1.0:
        raise ValueError(f"saliency quality must be in [0, 1], got {quality}")
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
    labels = torch.from_numpy(np.asarray(mask).astype(np.int64))
    size = tuple(labels.shape)
    foreground = labels > 0  # the ignore band (255) lies on object boundaries: salient
    error = 1.0 - quality
    saliency = foreground.float()
    saliency = saliency * (1 - _blobs(generator, size, foreground, 0.5 * error))
    saliency = torch.maximum(saliency, _blobs(generator, size, ~foreground, 0.25 * error))
    sigma = (0.5 + 4.0 * error) * max(size) / 128
    saliency = _gaussian_blur(saliency, sigma)
    confidence = 1.0 - float(torch.rand((), generator=generator)) * 0.25 * error
    return (saliency * confidence).clamp_(0.0, 1.0).numpy()


def save_saliency_png(path: str | Path, saliency: np.ndarray) -> Path:
    """Write ``saliency`` (float in [0, 1], ``(H, W)``) as an 8-bit grey PNG, atomically."""
    grey = Image.fromarray(np.clip(np.round(np.asarray(saliency) * 255.0), 0, 255).astype(np.uint8), mode="L")
    return atomic_write(path, lambda file: grey.save(file, format="PNG"))


def write_synthetic_saliency(
    root: str | Path,
    quality: float = 0.7,
    seed: int = 0,
    out_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Synthetic saliency maps of every mask ``root/SegmentationClass/<id>.png`` of a shapes dataset, to
    ``out_dir`` (default ``root/SaliencyMaps``) as ``<id>.png``.

    Image ``<id>`` is drawn from ``seed`` and a checksum of its id, so the maps do not depend on the
    order of writing. Returns ``{"out_dir", "images", "quality", "foreground_iou"}``: the mean IoU of the
    maps thresholded at 0.5 with the foreground masks (ignore band left out), a measure of their errors.
    """
    root = Path(root)
    masks = sorted((root / "SegmentationClass").glob("*.png"))
    if not masks:
        raise FileNotFoundError(f"no masks (SegmentationClass/*.png) under {root}")
    out = Path(out_dir) if out_dir is not None else root / SALIENCY_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    intersections = unions = 0
    for done, path in enumerate(masks, start=1):
        with Image.open(path) as handle:
            mask = np.array(handle)
        saliency = synthetic_saliency(mask, [seed, zlib.crc32(path.stem.encode())], quality)
        save_saliency_png(out / f"{path.stem}.png", saliency)
        valid = mask != IGNORE_INDEX
        predicted, truth = (saliency >= 0.5) & valid, (mask > 0) & valid
        intersections += int((predicted & truth).sum())
        unions += int((predicted | truth).sum())
        if progress is not None:
            progress(done, len(masks))
    return {
        "out_dir": str(out),
        "images": len(masks),
        "quality": quality,
        "foreground_iou": round(100.0 * intersections / max(unions, 1), 2),
    }
