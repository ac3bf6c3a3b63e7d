"""Pascal VOC 2012 (and the SBD-augmented ``train_aug`` set) in its native layout.

    root/JPEGImages/<id>.jpg
    root/SegmentationClass/<id>.png            palette PNG, 255 = boundary (ignore)
    root/SegmentationClassAug/<id>.png         with use_aug (SBD masks, class indices)
    root/ImageSets/Segmentation/<split>.txt    (train_aug.txt there or in root with use_aug)
    root/classes.txt                           optional class names, background first
    root/cls_labels.npy                        optional image-level tags

``use_aug=True`` (or ``split="train_aug"``) reads the training split from ``train_aug.txt`` with
``SegmentationClassAug`` masks; other splits keep ``SegmentationClass`` (the usual protocol).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .base import SegmentationDataset, read_class_names, read_list_file, require_directory
from .palette import VOC_CLASS_NAMES, read_png_palette, voc_palette


def _find_list(root: Path, file_name: str) -> Path:
    candidates = [root / "ImageSets" / "Segmentation" / file_name, root / file_name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"list file not found: tried {', '.join(str(path) for path in candidates)}")


class VOCDataset(SegmentationDataset):
    """Pascal VOC layout; also the layout written by ``generate_shapes``."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Callable | None = None,
        label_dir: str | Path | None = None,
        use_aug: bool = False,
        list_file: str | Path | None = None,
        num_classes: int | None = None,
        tag_file: str | Path | None = None,
    ) -> None:
        root = require_directory(Path(root), "VOC root")
        augmented = split == "train_aug" or (use_aug and split == "train")
        if list_file is not None:
            names = read_list_file(Path(list_file))
        else:
            names = read_list_file(_find_list(root, "train_aug.txt" if augmented else f"{split}.txt"))
        class_file = root / "classes.txt"
        class_names = read_class_names(class_file) if class_file.is_file() else list(VOC_CLASS_NAMES)
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"num_classes={num_classes} but {class_file if class_file.is_file() else 'VOC'} "
                f"names {len(class_names)} classes"
            )
        mask_dir = root / ("SegmentationClassAug" if augmented else "SegmentationClass")
        # the colours of the dataset's own palette masks (VOC's, or those make-data wrote), else VOC's
        palette = read_png_palette(mask_dir / f"{names[0]}.png", len(class_names)) or voc_palette(
            len(class_names)
        )
        self.split = split
        super().__init__(
            root=root,
            names=names,
            image_paths=[root / "JPEGImages" / f"{name}.jpg" for name in names],
            mask_paths=[mask_dir / f"{name}.png" for name in names],
            class_names=class_names,
            palette=palette,
            has_background=True,
            transforms=transforms,
            label_dir=label_dir,
            tag_file=tag_file,
        )
