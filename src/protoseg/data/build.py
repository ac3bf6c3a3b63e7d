"""``build_dataset``: a dataset by name, in its native on-disk format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .ade20k import ADE20KDataset
from .base import SegmentationDataset
from .cityscapes import CityscapesDataset
from .cocostuff import COCOStuffDataset
from .folder import FolderDataset
from .voc import VOCDataset

DATASETS: dict[str, type[SegmentationDataset]] = {
    "voc": VOCDataset,
    "cityscapes": CityscapesDataset,
    "ade20k": ADE20KDataset,
    "cocostuff": COCOStuffDataset,
    "folder": FolderDataset,
}


def build_dataset(
    name: str,
    root: str | Path,
    split: str,
    transforms: Callable | None = None,
    label_dir: str | Path | None = None,
    use_aug: bool = False,
    list_file: str | Path | None = None,
    num_classes: int | None = None,
    **options,
) -> SegmentationDataset:
    """The dataset ``name`` (voc | cityscapes | ade20k | cocostuff | folder) at ``root``.

    ``transforms``: a paired transform (default: normalise only); ``label_dir``: a folder of
    ``<name>.png`` masks (pseudo labels) replacing the annotations; ``use_aug``: VOC's SBD
    ``train_aug`` set; ``list_file``: image ids to use instead of the split's list;
    ``num_classes``: required by folder datasets without ``classes.txt``, checked elsewhere.
    ``options`` go to the dataset class (``tag_file``, folder ``has_background``).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; valid names: {', '.join(DATASETS)}")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    arguments = dict(
        split=split, transforms=transforms, label_dir=label_dir, list_file=list_file, num_classes=num_classes
    )
    if name == "voc":
        arguments["use_aug"] = use_aug
    elif use_aug:
        raise ValueError(f"use_aug is only for the voc dataset, not '{name}'")
    return DATASETS[name](root, **arguments, **options)
