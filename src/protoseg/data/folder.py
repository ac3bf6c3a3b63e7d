"""A generic folder dataset: ``images/`` and ``masks/`` with matching file stems.

    root/images/<id>.<jpg|png|...>      or root/images/<split>/...  (then masks/<split>/...)
    root/masks/<id>.png                 single-channel PNG of class indices, 255 = ignore
    root/<split>.txt                    optional list of ids (used when present)
    root/classes.txt                    optional class names (else ``num_classes`` is required)
    root/cls_labels.npy                 optional image-level tags

Without a split subfolder or list, every image in ``images/`` belongs to every split. The
dataset has a background class when ``has_background`` says so, or (by default) when the first
class is named ``background``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .base import (
    IMAGE_EXTENSIONS,
    SegmentationDataset,
    read_class_names,
    read_list_file,
    require_directory,
)
from .palette import voc_palette

BACKGROUND_NAMES = ("background", "_background_", "bg")


class FolderDataset(SegmentationDataset):
    """Images and index masks in two folders."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Callable | None = None,
        label_dir: str | Path | None = None,
        list_file: str | Path | None = None,
        num_classes: int | None = None,
        tag_file: str | Path | None = None,
        has_background: bool | None = None,
    ) -> None:
        root = require_directory(Path(root), "dataset root")
        image_dir = require_directory(root / "images", "image folder")
        mask_dir = root / "masks"
        if (image_dir / split).is_dir():
            image_dir, mask_dir = image_dir / split, mask_dir / split
        images_by_stem = {
            path.stem: path
            for path in sorted(image_dir.iterdir())
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
        }
        list_path = Path(list_file) if list_file is not None else root / f"{split}.txt"
        if list_file is not None or list_path.is_file():
            names = read_list_file(list_path)
            missing = [name for name in names if name not in images_by_stem]
            if missing:
                raise FileNotFoundError(
                    f"image file not found: {image_dir / missing[0]}.* (listed in {list_path}; "
                    f"{len(missing)} missing)"
                )
        else:
            names = sorted(images_by_stem)
        class_names = self._class_names(root, num_classes)
        if has_background is None:
            has_background = class_names[0].lower() in BACKGROUND_NAMES
        self.split = split
        super().__init__(
            root=root,
            names=names,
            image_paths=[images_by_stem[name] for name in names],
            mask_paths=[mask_dir / f"{name}.png" for name in names],
            class_names=class_names,
            palette=voc_palette(len(class_names)),
            has_background=has_background,
            transforms=transforms,
            label_dir=label_dir,
            tag_file=tag_file,
        )

    @staticmethod
    def _class_names(root: Path, num_classes: int | None) -> list[str]:
        class_file = root / "classes.txt"
        if class_file.is_file():
            names = read_class_names(class_file)
            if num_classes is not None and num_classes != len(names):
                raise ValueError(f"num_classes={num_classes} but {class_file} names {len(names)} classes")
            return names
        if num_classes is None:
            raise ValueError(f"folder dataset {root}: give num_classes or write {class_file}")
        if not 1 <= num_classes <= 255:
            raise ValueError(f"num_classes must be in 1..255, got {num_classes}")
        return [f"class_{index}" for index in range(num_classes)]
