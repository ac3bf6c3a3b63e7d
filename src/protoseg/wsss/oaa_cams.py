"""OAA's accumulated attention maps (``RUN/oaa/``) as CAM files, so that ``seeds-eval`` and
``pseudo-label`` use them unchanged (docs/methods.md section 3c).

Each training image gets ``<out_dir>/<name>.npz`` in the format of
:func:`protoseg.wsss.cam_inference.save_cam`: its accumulated 8-bit maps (``/ 255``) upsampled
bilinearly (``align_corners=False``) from their grid to the image's size, normalised per class (``max``,
as the releases' maps are already scaled to their maximum, or ``minmax``, the OAA release's ``res.py``)
and restricted to its tags. A tagged class that never got a map (its every step filtered out, and the
image not seen in the last epoch) is written as zeros, i.e. all background, and counted in the summary;
so is an image without any file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..ops.cams import normalise_cams
from ..ops.oaa import LEVELS
from ..prototypes.attention_store import map_path, read_maps, read_meta
from .cam_inference import cam_path, save_cam


def accumulated_cam(
    maps: torch.Tensor, classes: torch.Tensor, num_classes: int, size: tuple[int, int], tags: torch.Tensor,
    normalisation: str = "max",
) -> torch.Tensor:  # fmt: skip
    """``(C, H, W)`` float32 CAM of one image from its accumulated ``maps`` ``(K, Gh, Gw)`` uint8 of
    ``classes`` ``(K,)``: levels / 255, bilinear to ``size``, normalised, zero outside ``tags`` ``(C,)``."""
    dense = torch.zeros(1, num_classes, *maps.shape[1:])
    if len(classes):
        dense[0, classes] = maps.float() / LEVELS
    upsampled = F.interpolate(dense, size=size, mode="bilinear", align_corners=False)
    return normalise_cams(upsampled, tags.reshape(1, -1).float(), normalisation)[0]


def write_accumulated_cams(
    store_dir: str | os.PathLike,
    dataset,
    out_dir: str | os.PathLike,
    normalisation: str = "max",
    progress: bool = True,
) -> dict:
    """CAM files of every image of ``dataset`` (the run's training set: ``names``, ``image_tags(i)``,
    ``load_image(i)``) from the OAA maps in ``store_dir``; resumable (existing files are kept).

    Returns ``{"written", "skipped", "images", "without_maps", "classes_without_maps", "seconds"}``.
    """
    store_dir = Path(store_dir)
    meta = read_meta(store_dir)
    names = list(dataset.names)
    if meta["names"] != names:
        raise ValueError(
            f"{store_dir} holds the OAA maps of {len(meta['names'])} images that are not this dataset's "
            f"{len(names)} training images (in order); give the run's own data settings"
        )
    num_classes = int(meta["num_classes"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = skipped = without_maps = classes_without_maps = 0
    start = time.perf_counter()
    for index, name in enumerate(
        tqdm(names, desc="OAA maps -> CAMs", disable=not progress, dynamic_ncols=True)
    ):
        path = cam_path(out_dir, name)
        if path.exists():
            skipped += 1
            continue
        tags = torch.from_numpy(np.asarray(dataset.image_tags(index), dtype=np.float32))
        if tags.shape != (num_classes,):
            raise ValueError(f"image '{name}' has {tags.shape[0]} tags, the OAA maps {num_classes} classes")
        width, height = dataset.load_image(index).size
        source = map_path(store_dir, index)
        if source.is_file():
            record = read_maps(source)
            maps, classes = record.maps, record.classes
        else:
            maps, classes = torch.zeros(0, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
            without_maps += 1
        tagged = set(torch.nonzero(tags > 0.5).flatten().tolist())
        classes_without_maps += len(tagged - set(classes.tolist()))
        cam = accumulated_cam(maps, classes, num_classes, (height, width), tags, normalisation)
        save_cam(path, cam, tags)
        written += 1
    return {
        "written": written,
        "skipped": skipped,
        "images": len(names),
        "without_maps": without_maps,
        "classes_without_maps": classes_without_maps,
        "seconds": time.perf_counter() - start,
    }
