"""Multi-scale, flipped CAM inference and the per-image CAM files (methods.md section 5, step 2).

CAM file format (``<out_dir>/<name>.npz``, written with ``np.savez_compressed``):

* ``cams``: float16 ``(K, H, W)``, the normalised CAMs of the K *tagged* classes only (the other
  classes are zero by construction, so storing them would only waste disk);
* ``class_indices``: int64 ``(K,)``, their foreground class indices in ascending order;
* ``num_classes``: int64 scalar, C (the number of CAM classes, background excluded on VOC-like data).

Files are written atomically (:func:`protoseg.files.atomic_write`), so a run that is killed never leaves
a truncated ``.npz`` behind, and a resumed run can trust every file that exists.
"""

from __future__ import annotations

import os
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..files import atomic_write
from ..ops.cams import normalise_cams

CamFunction = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_SCALES = (0.5, 1.0, 1.5, 2.0)
NORMALISATION_EPSILON = 1e-5


def _scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def multiscale_cam(
    cam_fn: CamFunction,
    image: torch.Tensor,
    tags: torch.Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    normalisation: str = "max",
) -> torch.Tensor:
    """Multi-scale + horizontal-flip CAM of one image, ReLU-ed, normalised, restricted to its tags.

    ``CAM_c = relu(sum_{s, f} up(unflip_f(cam_fn(flip_f(resize_s(image))))_c)) / (max_xy(.) + 1e-5)``
    for tagged classes c, 0 for the others (IRN-style CAM inference; the ReLU follows the sum, so a
    ``cam_fn`` that already rectifies its output gives IRN's per-scale ReLU). ``normalisation="minmax"``
    divides ``relu(x - min - 1e-5)`` by ``max - min + 1e-5`` instead (SEAM's and PPC's inference;
    :func:`protoseg.ops.cams.normalise_cams`).

    Args:
        cam_fn: ``images (B, 3, h, w) -> (B, C, h', w')`` raw CAMs (any stride); called once per scale
            with the image and its flip in the same batch. Put the model in eval mode before.
        image: ``(3, H, W)`` or ``(1, 3, H, W)`` normalised image (on the model's device).
        tags: ``(C,)`` multi-hot image-level tags (> 0 = present).
        scales: image resize factors (bilinear, ``align_corners=False``).
        flip: also run the horizontally flipped image.

    Returns:
        ``(C, H, W)`` float32 in ``[0, 1)`` on the image's device.
    """
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W) or (1, 3, H, W), got shape {tuple(image.shape)}")
    if len(scales) == 0 or any(not scale > 0 for scale in scales):
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {tuple(scales)}")
    size = (image.shape[1], image.shape[2])
    total: torch.Tensor | None = None
    with torch.no_grad():
        for scale in scales:
            scaled = image[None].float()
            scaled_size = _scaled_size(size, scale)
            if scaled_size != size:
                scaled = F.interpolate(scaled, size=scaled_size, mode="bilinear", align_corners=False)
            batch = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled
            cams = cam_fn(batch).float()
            if cams.dim() != 4 or cams.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"cam_fn must return (B={batch.shape[0]}, C, h, w) CAMs, got shape {tuple(cams.shape)}"
                )
            if flip:
                cams = cams[0:1] + cams[1:2].flip(-1)
            cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)[0]
            total = cams if total is None else total + cams
        assert total is not None
        tags = tags.reshape(-1)
        if tags.shape[0] != total.shape[0]:
            raise ValueError(f"tags have {tags.shape[0]} entries but cam_fn gave {total.shape[0]} classes")
        present = (tags.reshape(1, -1).to(total.device) > 0).to(total.dtype)
        return normalise_cams(total[None], present, normalisation)[0]


@dataclass
class CamRecord:
    """One image's stored CAMs: ``cams`` float32 ``(K, H, W)`` of the tagged ``class_indices`` ``(K,)``."""

    cams: np.ndarray
    class_indices: np.ndarray
    num_classes: int

    @property
    def size(self) -> tuple[int, int]:
        return int(self.cams.shape[1]), int(self.cams.shape[2])

    def dense(self) -> np.ndarray:
        """``(C, H, W)`` float32 CAMs over all classes (zeros for untagged ones)."""
        dense = np.zeros((self.num_classes, *self.size), dtype=np.float32)
        dense[self.class_indices] = self.cams
        return dense


def cam_path(out_dir: str | os.PathLike, name: str) -> Path:
    """Where the CAM of image ``name`` is stored: ``<out_dir>/<name>.npz``."""
    return Path(out_dir) / f"{name}.npz"


def save_cam(
    path: str | os.PathLike, cam: torch.Tensor | np.ndarray, tags: torch.Tensor | np.ndarray
) -> None:
    """Store ``cam`` ``(C, H, W)`` (float, in [0, 1]) as float16 CAMs of the classes with ``tags > 0``.

    The write is atomic (temporary file + ``os.replace``). See the module docstring for the format.
    """
    cam = cam.detach().float().cpu().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam)
    tags = tags.detach().cpu().numpy() if isinstance(tags, torch.Tensor) else np.asarray(tags)
    if cam.ndim != 3:
        raise ValueError(f"cam must be (C, H, W), got shape {cam.shape} for {path}")
    tags = tags.reshape(-1)
    if tags.shape[0] != cam.shape[0]:
        raise ValueError(f"tags have {tags.shape[0]} entries but cam has {cam.shape[0]} classes for {path}")
    class_indices = np.flatnonzero(tags > 0).astype(np.int64)
    arrays = {
        "cams": cam[class_indices].astype(np.float16),
        "class_indices": class_indices,
        "num_classes": np.int64(cam.shape[0]),
    }
    atomic_write(path, lambda file: np.savez_compressed(file, **arrays))


def load_cam(path: str | os.PathLike) -> CamRecord:
    """Read a file written by :func:`save_cam`; ``ValueError`` naming the file when it is not one."""
    try:
        with np.load(path) as data:
            record = CamRecord(
                cams=data["cams"].astype(np.float32),
                class_indices=data["class_indices"].astype(np.int64),
                num_classes=int(data["num_classes"]),
            )
    except (KeyError, OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{path} is not a CAM file written by save_cam: {error}") from error
    if record.cams.ndim != 3 or record.cams.shape[0] != record.class_indices.shape[0]:
        raise ValueError(
            f"{path}: cams shape {record.cams.shape} does not match class_indices shape "
            f"{record.class_indices.shape}"
        )
    if record.class_indices.size and (
        record.class_indices.min() < 0 or record.class_indices.max() >= record.num_classes
    ):
        raise ValueError(f"{path}: class_indices {record.class_indices} outside [0, {record.num_classes})")
    return record


def run_cam_inference(
    cam_fn: CamFunction,
    dataset: Sequence[dict],
    out_dir: str | os.PathLike,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    normalisation: str | None = None,
) -> dict:
    """CAMs of every image of ``dataset`` (this rank's shard) to ``<out_dir>/<name>.npz``; resumable.

    ``normalisation`` (:func:`multiscale_cam`): None takes the ``cam_normalisation`` of the method
    ``cam_fn`` is bound to (``method.cams``), ``"max"`` for any other function.

    Samples are dicts with ``image`` ``(3, H, W)``, ``tags`` ``(C,)`` and ``name``. Rank r handles the
    indices ``r, r + world_size, ...``. An image whose file already exists is skipped (files are written
    atomically, so an existing file is complete). The sample is still loaded to learn its name.

    Returns:
        ``{"written", "skipped", "images", "seconds"}`` for this rank.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    if normalisation is None:
        normalisation = getattr(getattr(cam_fn, "__self__", None), "cam_normalisation", "max")
    indices = range(rank, len(dataset), world_size)
    written = skipped = 0
    start = time.perf_counter()
    for index in tqdm(indices, desc=f"CAM inference (rank {rank})", disable=not progress, dynamic_ncols=True):
        sample = dataset[index]
        path = cam_path(out_dir, sample["name"])
        if path.exists():
            skipped += 1
            continue
        image = torch.as_tensor(sample["image"]).to(device, non_blocking=True)
        tags = torch.as_tensor(sample["tags"])
        cam = multiscale_cam(
            cam_fn, image, tags.to(device), scales=scales, flip=flip, normalisation=normalisation
        )
        save_cam(path, cam, tags)
        written += 1
    return {
        "written": written,
        "skipped": skipped,
        "images": len(indices),
        "seconds": time.perf_counter() - start,
    }
