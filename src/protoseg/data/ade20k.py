"""ADE20K (SceneParsing challenge release) in its native layout, 150 classes.

    root/ADEChallengeData2016/images/{training,validation}/<id>.jpg    (or root is that folder)
    root/ADEChallengeData2016/annotations/{training,validation}/<id>.png

Label 0 ("other") becomes 255 (ignore), labels 1..150 become 0..149. Split names ``train`` /
``val`` are accepted for ``training`` / ``validation``.
"""

from __future__ import annotations

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
from .palette import ADE20K_CLASS_NAMES, voc_palette

SPLIT_FOLDERS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


class ADE20KDataset(SegmentationDataset):
    """ADE20K-150, no background class."""

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
        root = require_directory(Path(root), "ADE20K root")
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"ADE20K split must be one of {sorted(SPLIT_FOLDERS)}, got '{split}'")
        check_num_classes("ADE20K", ADE20K_CLASS_NAMES, num_classes)
        folder = SPLIT_FOLDERS[split]
        image_dir = require_directory(root / "images" / folder, "ADE20K image folder")
        names = names_from_list_or_folder(list_file, image_dir)
        self.split = split
        super().__init__(
            root=root,
            names=names,
            image_paths=[image_dir / f"{name}.jpg" for name in names],
            mask_paths=[root / "annotations" / folder / f"{name}.png" for name in names],
            class_names=ADE20K_CLASS_NAMES,
            palette=voc_palette(len(ADE20K_CLASS_NAMES) + 1)[1:],
            has_background=False,
            transforms=transforms,
            label_dir=label_dir,
            tag_file=tag_file,
        )

    def convert_mask(self, raw: np.ndarray) -> np.ndarray:
        """0 -> 255 (ignore), k -> k - 1; 255 stays ignore."""
        return np.where((raw == 0) | (raw == IGNORE_INDEX), IGNORE_INDEX, raw - 1)
