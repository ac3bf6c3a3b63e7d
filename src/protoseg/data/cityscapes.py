"""Cityscapes (fine annotations) in its native layout, mapped to the 19 official trainIds.

    root/leftImg8bit/<split>/<city>/<id>_leftImg8bit.png
    root/gtFine/<split>/<city>/<id>_gtFine_labelIds.png

Sample names are ``<id>`` (e.g. ``aachen_000000_000019``); a ``label_dir`` holds ``<id>.png``
masks already in trainIds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import (
    IGNORE_INDEX,
    SegmentationDataset,
    check_num_classes,
    read_list_file,
    require_directory,
)
from .palette import CITYSCAPES_CLASS_NAMES, CITYSCAPES_PALETTE

IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"

# The official labelId -> trainId table (cityscapesScripts labels.py); every other id is ignored.
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def _lookup_table() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


class CityscapesDataset(SegmentationDataset):
    """Cityscapes, 19 classes, no background class."""

    label_table = _lookup_table()

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Callable | None = None,
        label_dir: str | Path | None = None,
        list_file: str | Path | None = None,
        num_classes: int | None = None,
        tag_file: str | Path | None = None,
    ) -> None:
        root = require_directory(Path(root), "Cityscapes root")
        image_dir = require_directory(root / "leftImg8bit" / split, "Cityscapes image folder")
        check_num_classes("Cityscapes", CITYSCAPES_CLASS_NAMES, num_classes)
        if list_file is not None:
            names = [name.removesuffix("_leftImg8bit") for name in read_list_file(Path(list_file))]
        else:
            names = sorted(path.name[: -len(IMAGE_SUFFIX)] for path in image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        cities = [name.split("_")[0] for name in names]
        self.split = split
        super().__init__(
            root=root,
            names=names,
            image_paths=[image_dir / city / f"{name}{IMAGE_SUFFIX}" for name, city in zip(names, cities)],
            mask_paths=[
                root / "gtFine" / split / city / f"{name}{MASK_SUFFIX}" for name, city in zip(names, cities)
            ],
            class_names=CITYSCAPES_CLASS_NAMES,
            palette=CITYSCAPES_PALETTE,
            has_background=False,
            transforms=transforms,
            label_dir=label_dir,
            tag_file=tag_file,
        )

    def convert_mask(self, raw: np.ndarray) -> np.ndarray:
        """labelIds (0..33, -1) -> trainIds (0..18), everything else 255."""
        valid = (raw >= 0) & (raw < 256)
        return np.where(valid, self.label_table[np.clip(raw, 0, 255)], IGNORE_INDEX)
