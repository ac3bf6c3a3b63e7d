"""The base class of every segmentation dataset: file lists, validated loading, tags, transforms.

A sample is ``{"image": float32 (3, H, W) normalised, "mask": int64 (H, W) with 255 = ignore,
"tags": float32 multi-hot (C_fg,) or (C,), "name": image id, "index": the sample's position in the
dataset, "frame": float32 (6,) where the sample's pixels lie in the original image (see
:class:`~protoseg.data.transforms.Frame`)}``. ``dataset[i]`` (an int) loads
sample ``i`` with no randomness; ``dataset[(i, sample_seed)]`` (what ``SeededSampler`` yields)
seeds the training augmentation with ``torch.Generator().manual_seed(sample_seed)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..ops.labels import IGNORE_INDEX
from .saliency import read_saliency
from .tags import load_tag_file, tags_from_mask
from .transforms import Frame, build_transforms

CLS_LABELS_FILE = "cls_labels.npy"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def require_directory(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def read_list_file(path: Path) -> list[str]:
    """Image ids from a list file: one per line; the first token's stem when a line holds paths."""
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}")
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(Path(line.split()[0]).stem)
    if not names:
        raise ValueError(f"list file {path} is empty")
    return names


def check_num_classes(dataset: str, class_names: Sequence[str], num_classes: int | None) -> None:
    """A dataset with a fixed class list refuses a different ``num_classes`` from the config."""
    if num_classes is not None and num_classes != len(class_names):
        raise ValueError(f"{dataset} has {len(class_names)} classes, got num_classes={num_classes}")


def names_from_list_or_folder(
    list_file: str | Path | None, image_dir: Path, suffix: str = ".jpg"
) -> list[str]:
    """Image ids from ``list_file`` when given, else the sorted stems of ``image_dir/*<suffix>``."""
    if list_file is not None:
        return read_list_file(Path(list_file))
    return sorted(path.stem for path in image_dir.glob(f"*{suffix}"))


def read_class_names(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"class name file {path} is empty")
    return names


def read_image(path: Path) -> Image.Image:
    """An RGB PIL image; ``FileNotFoundError`` / ``ValueError`` naming the file otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as handle:
            return handle.convert("RGB")
    except Exception as error:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise ValueError(f"cannot read image {path}: {error}") from error


def read_mask_array(path: Path) -> np.ndarray:
    """The raw label array (H, W) of a single-channel (P / L / I) PNG, as int64."""
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        with Image.open(path) as handle:
            mode = handle.mode
            array = np.array(handle)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"cannot read mask {path}: {error}") from error
    if array.ndim != 2:
        raise ValueError(f"mask {path} must be single-channel (P, L or I mode), got mode {mode}")
    return array.astype(np.int64)


class SegmentationDataset(Dataset):
    """Shared loading logic; subclasses fill the lists and may override ``convert_mask``.

    Subclasses call ``super().__init__`` with the per-sample ``names``, ``image_paths`` and
    ``mask_paths`` (the native annotation files, or ``label_dir/<name>.png`` when pseudo labels
    replace them: those are read as class indices, without the dataset's native mapping).
    """

    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        *,
        root: Path,
        names: Sequence[str],
        image_paths: Sequence[Path],
        mask_paths: Sequence[Path],
        class_names: Sequence[str],
        palette: Sequence[Sequence[int]],
        has_background: bool,
        transforms: Callable | None = None,
        label_dir: str | Path | None = None,
        tag_file: str | Path | None = None,
    ) -> None:
        if not names:
            raise ValueError(f"{type(self).__name__}: no samples found under {root}")
        self.root = Path(root)
        self.names = list(names)
        self.image_paths = [Path(path) for path in image_paths]
        self.native_masks = label_dir is None
        if label_dir is not None:
            label_dir = require_directory(Path(label_dir), "label_dir")
            mask_paths = [label_dir / f"{name}.png" for name in self.names]
        self.mask_paths = [Path(path) for path in mask_paths]
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.palette = [list(colour) for colour in palette][: self.num_classes]
        self.has_background = has_background
        if transforms is None:
            transforms = build_transforms(train=False)
        self.transforms = transforms
        self.tag_source, self.tag_table = self._load_tag_table(tag_file)
        self.saliency_dir: Path | None = None

    def attach_saliency(self, saliency_dir: str | Path) -> None:
        """Add ``saliency`` ``(1, H, W)`` float32 in [0, 1] to every sample: ``saliency_dir/<name>.png``
        (see :mod:`~protoseg.data.saliency`), transformed with the image. A missing or mis-sized map is
        an error naming the file when the sample is loaded."""
        self.saliency_dir = require_directory(Path(saliency_dir), "data.saliency_dir")

    @property
    def saliency_paths(self) -> list[Path]:
        """The saliency map of each sample (empty without :meth:`attach_saliency`)."""
        if self.saliency_dir is None:
            return []
        return [self.saliency_dir / f"{name}.png" for name in self.names]

    # ----------------------------------------------------------------------------- tags
    @property
    def tag_class_names(self) -> list[str]:
        """The classes the ``tags`` vector runs over (foreground only with a background class)."""
        return self.class_names[1:] if self.has_background else list(self.class_names)

    def _load_tag_table(self, tag_file: str | Path | None) -> tuple[Path | None, dict | None]:
        path = Path(tag_file) if tag_file is not None else self.root / CLS_LABELS_FILE
        if tag_file is None and not path.is_file():
            return None, None
        table = load_tag_file(path, self.tag_class_names)
        return path, table

    def image_tags(self, index: int, mask: np.ndarray | None = None) -> np.ndarray:
        """Float32 multi-hot tags of sample ``index`` (tag file if any, else from its mask)."""
        name = self.names[index]
        if self.tag_table is not None:
            # IRN-style files key VOC ids as integers without the underscore (2007_000032 -> 2007000032)
            key = name if name in self.tag_table else name.replace("_", "")
            if key not in self.tag_table:
                raise ValueError(f"tag file {self.tag_source} has no entry for image '{name}'")
            tags = self.tag_table[key]
            if tags.shape != (len(self.tag_class_names),):
                raise ValueError(
                    f"tag file {self.tag_source}: image '{name}' has {tags.shape[0]} tags, "
                    f"expected {len(self.tag_class_names)}"
                )
            return tags
        if mask is None:
            mask = self.load_mask(index)
        return tags_from_mask(mask, self.num_classes, self.has_background)

    # ----------------------------------------------------------------------------- files
    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, index: int) -> Path:
        return self.image_paths[index]

    def mask_path(self, index: int) -> Path:
        return self.mask_paths[index]

    def convert_mask(self, raw: np.ndarray) -> np.ndarray:
        """Native annotation values -> class indices with 255 = ignore (identity by default)."""
        return raw

    def load_image(self, index: int) -> Image.Image:
        return read_image(self.image_paths[index])

    def load_mask(self, index: int) -> np.ndarray:
        """The validated mask (H, W) uint8 of sample ``index`` in protoseg's label space."""
        path = self.mask_paths[index]
        raw = read_mask_array(path)
        mask = self.convert_mask(raw) if self.native_masks else raw
        invalid = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= self.num_classes))
        if invalid.any():
            bad_values = np.unique(raw[invalid])[:10].tolist()
            raise ValueError(
                f"mask {path}: label values {bad_values} out of range for {self.num_classes} classes "
                f"(valid: 0..{self.num_classes - 1} and {IGNORE_INDEX} = ignore)"
            )
        return mask.astype(np.uint8)

    def load_raw(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """(RGB PIL image, uint8 mask (H, W) in protoseg's label space), sizes checked."""
        image = self.load_image(index)
        mask = self.load_mask(index)
        if mask.shape != (image.height, image.width):
            raise ValueError(
                f"size mismatch: image {self.image_paths[index]} is {image.height}x{image.width}, "
                f"mask {self.mask_paths[index]} is {mask.shape[0]}x{mask.shape[1]}"
            )
        return image, mask

    # ----------------------------------------------------------------------------- samples
    def _resolve(self, item) -> tuple[int, torch.Generator | None]:
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise ValueError(f"expected an index or (index, sample_seed), got {item!r}")
            index, seed = int(item[0]), int(item[1])
            generator = torch.Generator().manual_seed(seed)
        else:
            index, generator = int(item), None
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return index, generator

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, generator = self._resolve(item)
        image, mask = self.load_raw(index)
        tags = self.image_tags(index, mask)
        sample = {}
        frame = Frame(image.height, image.width)
        if self.saliency_dir is not None:
            path = self.saliency_dir / f"{self.names[index]}.png"
            saliency = read_saliency(path, (image.height, image.width), self.image_paths[index])
            image_tensor, mask_tensor, sample["saliency"] = self.transforms(
                image, mask, generator, extra=torch.from_numpy(saliency)[None], frame=frame
            )
        else:
            image_tensor, mask_tensor = self.transforms(image, mask, generator, frame=frame)
        return {
            "image": image_tensor,
            "mask": mask_tensor,
            "tags": torch.from_numpy(np.array(tags, dtype=np.float32)),
            "name": self.names[index],
            "index": index,
            "frame": frame.as_tensor(),
            **sample,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, samples={len(self)}, "
            f"num_classes={self.num_classes}, native_masks={self.native_masks})"
        )
