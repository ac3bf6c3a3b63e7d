"""Datasets and transforms of a run, built from its ``data`` config section in one place."""

from __future__ import annotations

from ..config import DataConfig
from ..data import build_dataset, build_transforms


def data_transforms(data: DataConfig, train: bool):
    """Training: scale, crop, flip, colour jitter, normalise; evaluation: normalise only."""
    if not train:
        return build_transforms(False, None, mean=tuple(data.mean), std=tuple(data.std))
    return build_transforms(
        True,
        tuple(data.crop_size),
        scale_range=tuple(data.scale_range),
        flip=data.flip,
        color_jitter=data.color_jitter,
        mean=tuple(data.mean),
        std=tuple(data.std),
        aspect_range=tuple(data.aspect_range),
        brightness_shift=data.brightness_shift,
        min_side=data.min_side,
    )


def build_split_dataset(data: DataConfig, split: str, train: bool = False):
    """The dataset of ``split``; ``train=True`` adds augmentation, ``data.label_dir`` masks (pseudo
    labels), ``data.train_list`` and the ``data.saliency_dir`` maps. VOC's aug set is used for the
    training split when ``use_aug``."""
    options = {"tag_file": data.tag_file} if data.tag_file else {}
    if train:
        options.update(label_dir=data.label_dir, list_file=data.train_list)
    dataset = build_dataset(
        data.name,
        data.root,
        split,
        transforms=data_transforms(data, train),
        use_aug=data.use_aug and split == data.train_split,
        num_classes=data.num_classes,
        **options,
    )
    if train and data.saliency_dir is not None:
        dataset.attach_saliency(data.saliency_dir)
    return dataset
