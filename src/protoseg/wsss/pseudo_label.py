"""Pseudo labels from stored CAMs (methods.md section 5, step 4): threshold, ignore band, optional CRF.

Label of a pixel: ``argmax(cat(threshold, CAM))`` with 0 = background and foreground class c -> c + 1
(exactly the seed rule of :mod:`protoseg.wsss.seeds`, so the seed mIoU of a threshold is the quality of
its pseudo labels before the ignore band). Pixels whose maximum foreground score m lies in the
*ignore band* ``low <= m < high`` are set to 255 (uncertain: neither confidently background nor
foreground). The default band, ``"auto"``, is ``(max(0, t - 0.05), t + 0.10)``: asymmetric because
CAMs are blurred by the backbone stride, so the scores just above t are where the CAM spills over the
object boundary. It is narrower than IRN's (0.05, 0.30) around t = 0.15, which was meant for affinity
labels rather than for training a segmentor directly. ``None`` disables the band.

Output: palette PNGs ``<out_dir>/<name>.png`` whose pixel values are the labels (255 = ignore), usable
as a dataset's ``label_dir``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from protoseg.data.palette import full_palette, save_label_png
from protoseg.ops.labels import IGNORE_INDEX
from protoseg.wsss.cam_inference import load_cam
from protoseg.wsss.crf import refine_with_crf, require_dense_crf

AUTO_BAND_BELOW = 0.05
AUTO_BAND_ABOVE = 0.10

IgnoreBand = tuple[float, float] | str | None
ImageLoader = Callable[[str], np.ndarray]


def resolve_ignore_band(threshold: float, ignore_band: IgnoreBand = "auto") -> tuple[float, float] | None:
    """The ``(low, high)`` band for ``threshold``: ``"auto"`` -> ``(max(0, t - 0.05), t + 0.10)``."""
    if ignore_band is None:
        return None
    if isinstance(ignore_band, str):
        if ignore_band != "auto":
            raise ValueError(f"ignore_band must be (low, high), 'auto' or None, got {ignore_band!r}")
        return max(0.0, threshold - AUTO_BAND_BELOW), threshold + AUTO_BAND_ABOVE
    if len(ignore_band) != 2:
        raise ValueError(f"ignore_band must be (low, high), got {ignore_band!r}")
    low, high = float(ignore_band[0]), float(ignore_band[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"ignore_band must be finite with low <= high, got {ignore_band!r}")
    return low, high


def make_pseudo_label(
    cams: np.ndarray | torch.Tensor,
    class_indices: np.ndarray | Sequence[int],
    threshold: float,
    ignore_band: IgnoreBand = "auto",
    image: np.ndarray | None = None,
    crf_options: dict | None = None,
) -> np.ndarray:
    """Pseudo label of one image from the CAMs of its tagged classes.

    Args:
        cams: ``(K, H, W)`` CAM scores in [0, 1] of the K tagged classes.
        class_indices: ``(K,)`` their foreground class indices (label = index + 1).
        threshold: background score t >= 0; a pixel is foreground iff its max score > t (float64 compare).
        ignore_band: ``(low, high)``, ``"auto"`` or ``None``; pixels with ``low <= max score < high`` -> 255.
        image: ``(H, W, 3)`` uint8 RGB image; when given, the label is the dense-CRF refinement
            (:func:`protoseg.wsss.crf.refine_with_crf`) of the probabilities ``normalise(cat(t, cams))``,
            whose CRF-free argmax is the thresholded label; the ignore band is applied afterwards.
        crf_options: keyword arguments of ``refine_with_crf``.

    Returns:
        ``(H, W)`` uint8 labels: 0 background, c + 1 foreground class c, 255 ignore.
    """
    cams = cams.detach().float().cpu().numpy() if isinstance(cams, torch.Tensor) else np.asarray(cams)
    class_indices = np.asarray(class_indices, dtype=np.int64).reshape(-1)
    if cams.ndim != 3 or cams.shape[0] != class_indices.shape[0]:
        raise ValueError(f"cams shape {cams.shape} does not match class_indices shape {class_indices.shape}")
    if class_indices.size and (class_indices.min() < 0 or class_indices.max() + 1 >= IGNORE_INDEX):
        raise ValueError(f"class_indices {class_indices} must lie in [0, {IGNORE_INDEX - 1})")
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")
    band = resolve_ignore_band(threshold, ignore_band)
    height, width = cams.shape[1:]
    if cams.shape[0] == 0:
        max_score = np.zeros((height, width), dtype=np.float64)
        label = np.zeros((height, width), dtype=np.uint8)
    else:
        max_score = cams.max(axis=0).astype(np.float64)
        foreground_label = (class_indices[cams.argmax(axis=0)] + 1).astype(np.uint8)
        label = np.where(max_score > threshold, foreground_label, np.uint8(0)).astype(np.uint8)
        if image is not None:
            scores = np.concatenate([np.full((1, height, width), threshold, dtype=np.float32), cams])
            probabilities = scores / np.maximum(scores.sum(axis=0, keepdims=True), 1e-12)
            refined = refine_with_crf(image, probabilities, **(crf_options or {}))
            label_of_channel = np.concatenate([[0], class_indices + 1]).astype(np.uint8)
            label = label_of_channel[refined.argmax(axis=0)]
    if band is not None:
        low, high = band
        label[(max_score >= low) & (max_score < high)] = IGNORE_INDEX
    return label


def write_pseudo_labels(
    cam_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    threshold: float,
    palette: np.ndarray | Sequence[Sequence[int]],
    ignore_band: IgnoreBand = "auto",
    crf: bool = False,
    image_loader: ImageLoader | None = None,
    progress: bool = True,
    names: Sequence[str] | None = None,
    crf_options: dict | None = None,
) -> dict:
    """Pseudo-label PNGs ``<out_dir>/<name>.png`` for the CAM files ``<cam_dir>/<name>.npz``.

    Args:
        names: the images to label (default: every ``.npz`` under ``cam_dir``, sorted); a missing CAM
            file is an error, never a silent skip. Existing PNGs are overwritten.
        palette: ``(N, 3)`` colours, N >= number of CAM classes + 1 (background).
        crf: refine with a dense CRF; needs ``image_loader(name) -> (H, W, 3)`` uint8 RGB and the
            ``pydensecrf2`` package (``RuntimeError`` saying so before anything is written otherwise).

    Returns:
        ``{"written", "threshold", "ignore_band", "ignored_fraction", "seconds"}``.
    """
    if crf:
        require_dense_crf()
        if image_loader is None:
            raise ValueError("crf=True needs an image_loader(name) -> (H, W, 3) uint8 image")
    band = resolve_ignore_band(threshold, ignore_band)
    given_colours = np.asarray(palette).shape[0]
    palette = full_palette(palette)
    cam_dir = Path(cam_dir)
    if names is None:
        names = sorted(str(path.relative_to(cam_dir).with_suffix("")) for path in cam_dir.rglob("*.npz"))
        if not names:
            raise ValueError(f"no CAM files (*.npz) in {cam_dir}")
    start = time.perf_counter()
    written = ignored_pixels = total_pixels = 0
    for name in tqdm(names, desc="pseudo labels", disable=not progress, dynamic_ncols=True):
        path = cam_dir / f"{name}.npz"
        if not path.exists():
            raise ValueError(f"missing CAM file {path} for image {name!r}")
        record = load_cam(path)
        if record.num_classes + 1 > given_colours:
            raise ValueError(
                f"palette has {given_colours} colours but {path} has {record.num_classes} + 1 labels"
            )
        image = None
        if crf:
            image = np.asarray(image_loader(name))
            if image.shape[:2] != record.size:
                raise ValueError(
                    f"image of {name!r} has shape {image.shape} but its CAM {path} has {record.size}"
                )
        label = make_pseudo_label(record.cams, record.class_indices, threshold, band, image, crf_options)
        save_label_png(Path(out_dir) / f"{name}.png", label, palette)
        written += 1
        ignored_pixels += int((label == IGNORE_INDEX).sum())
        total_pixels += label.size
    return {
        "written": written,
        "threshold": threshold,
        "ignore_band": band,
        "ignored_fraction": ignored_pixels / max(total_pixels, 1),
        "seconds": time.perf_counter() - start,
    }
