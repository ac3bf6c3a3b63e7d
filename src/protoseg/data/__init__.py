"""protoseg.data: datasets in their native formats, the synthetic shapes benchmark, paired
transforms, seeded sampling and image-level tags."""

from ..ops.labels import IGNORE_INDEX
from .ade20k import ADE20KDataset
from .base import SegmentationDataset
from .build import DATASETS, build_dataset
from .cityscapes import CityscapesDataset
from .cocostuff import COCOStuffDataset
from .folder import FolderDataset
from .palette import png_palette, voc_palette
from .sampler import SeededSampler, ShardedEvalIndices, sample_seed
from .shapes import SHAPES_CLASS_NAMES, SHAPES_PALETTE, generate_shapes
from .tags import load_cls_labels, load_tag_file, save_cls_labels, tags_from_mask
from .transforms import (
    ColorJitter,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    build_transforms,
)
from .voc import VOCDataset

__all__ = [
    "ADE20KDataset",
    "COCOStuffDataset",
    "CityscapesDataset",
    "ColorJitter",
    "Compose",
    "DATASETS",
    "FolderDataset",
    "IGNORE_INDEX",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomScale",
    "SHAPES_CLASS_NAMES",
    "SHAPES_PALETTE",
    "SeededSampler",
    "SegmentationDataset",
    "ShardedEvalIndices",
    "VOCDataset",
    "build_dataset",
    "build_transforms",
    "generate_shapes",
    "load_cls_labels",
    "load_tag_file",
    "png_palette",
    "sample_seed",
    "save_cls_labels",
    "tags_from_mask",
    "voc_palette",
]
