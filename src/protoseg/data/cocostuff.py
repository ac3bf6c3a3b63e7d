"""COCO-Stuff-164k in its native layout, 171 classes.

    root/images/{train2017,val2017}/<id>.jpg
    root/annotations/{train2017,val2017}/<id>_labelTrainIds.png   preferred: values 0..170, 255
    root/annotations/{train2017,val2017}/<id>.png                 otherwise: raw stuffthingmaps

Which annotation kind is used is decided once per split: ``*_labelTrainIds.png`` when the folder
holds any (mmsegmentation's converted files, read as they are), else the raw ``<id>.png`` maps
(values = COCO category id - 1, 0..181, 255 unlabelled), mapped to the 171 trainIds with
mmsegmentation's ``clsID_to_trID`` table: the 11 category ids COCO never uses become 255.
``self.mask_format`` says which ("train_ids" or "raw"). Split names ``train`` / ``val`` are
accepted for ``train2017`` / ``val2017``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import (
    IGNORE_INDEX,
    SegmentationDataset,
    check_num_classes,
    names_from_list_or_folder,
    require_directory,
)
from .palette import COCO_STUFF_CLASS_NAMES, voc_palette

SPLIT_FOLDERS = {"train": "train2017", "val": "val2017", "train2017": "train2017", "val2017": "val2017"}
TRAIN_ID_SUFFIX = "_labelTrainIds.png"
# Raw stuffthingmaps values (COCO category id - 1) that belong to no class of COCO-Stuff.
UNUSED_RAW_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
NUM_RAW_IDS = 182


def _raw_to_train_id_table() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.int64)
    used = [raw_id for raw_id in range(NUM_RAW_IDS) if raw_id not in UNUSED_RAW_IDS]
    table[used] = np.arange(len(used))
    return table


def _has_train_id_files(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        return any(entry.name.endswith(TRAIN_ID_SUFFIX) for entry in entries)


class COCOStuffDataset(SegmentationDataset):
    """COCO-Stuff-164k, 171 classes, no background class."""

    raw_table = _raw_to_train_id_table()

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
        root = require_directory(Path(root), "COCO-Stuff root")
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"COCO-Stuff split must be one of {sorted(SPLIT_FOLDERS)}, got '{split}'")
        check_num_classes("COCO-Stuff", COCO_STUFF_CLASS_NAMES, num_classes)
        folder = SPLIT_FOLDERS[split]
        image_dir = require_directory(root / "images" / folder, "COCO-Stuff image folder")
        annotation_dir = root / "annotations" / folder
        names = names_from_list_or_folder(list_file, image_dir)
        self.mask_format = "train_ids" if _has_train_id_files(annotation_dir) else "raw"
        suffix = TRAIN_ID_SUFFIX if self.mask_format == "train_ids" else ".png"
        self.split = split
        super().__init__(
            root=root,
            names=names,
            image_paths=[image_dir / f"{name}.jpg" for name in names],
            mask_paths=[annotation_dir / f"{name}{suffix}" for name in names],
            class_names=COCO_STUFF_CLASS_NAMES,
            palette=voc_palette(len(COCO_STUFF_CLASS_NAMES) + 1)[1:],
            has_background=False,
            transforms=transforms,
            label_dir=label_dir,
            tag_file=tag_file,
        )

    def convert_mask(self, raw: np.ndarray) -> np.ndarray:
        if self.mask_format == "train_ids":
            return raw
        valid = (raw >= 0) & (raw < 256)
        mapped = self.raw_table[np.clip(raw, 0, 255)]
        # raw values 182..254 are not COCO ids at all: keep them so the range check reports them
        mapped = np.where((raw >= NUM_RAW_IDS) & (raw != IGNORE_INDEX), raw, mapped)
        return np.where(valid, mapped, raw)
