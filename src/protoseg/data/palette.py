"""Class names and colour palettes of the supported datasets.

A palette is a list of ``[r, g, b]`` uint8 triples, one per class. Every label map protoseg writes
(dataset masks, predictions, pseudo labels) and every picture it draws uses :func:`full_palette`:
the classes' colours, black for indices beyond them, and VOC's void colour for the ignore label 255.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_write
from ..ops.labels import IGNORE_INDEX

IGNORE_COLOUR = (224, 224, 192)
"""Colour of the ignore label 255: Pascal VOC's "void" boundary colour."""

VOC_CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

CITYSCAPES_CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)  # fmt: skip

CITYSCAPES_PALETTE: list[list[int]] = [
    [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
    [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60],
    [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32],
]  # fmt: skip

ADE20K_CLASS_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair",
    "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box",
    "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet",
    "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag",
)  # fmt: skip

COCO_STUFF_CLASS_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
    "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv",
    "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard",
    "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow",
    "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road",
    "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other",
    "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel",
    "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind",
    "window-other", "wood",
)  # fmt: skip


def voc_palette(num_classes: int = 256) -> list[list[int]]:
    """The Pascal VOC colour map (bit-interleaved class index), ``num_classes`` entries."""
    palette = []
    for index in range(num_classes):
        red = green = blue = 0
        label = index
        for bit in range(8):
            red |= ((label >> 0) & 1) << (7 - bit)
            green |= ((label >> 1) & 1) << (7 - bit)
            blue |= ((label >> 2) & 1) << (7 - bit)
            label >>= 3
        palette.append([red, green, blue])
    return palette


def read_png_palette(path: str | os.PathLike, count: int) -> list[list[int]] | None:
    """The first ``count`` colours of a palette ('P' mode) PNG, or None when the file is missing,
    unreadable or not a palette image (only the header is read)."""
    try:
        with Image.open(path) as image:
            if image.mode != "P":
                return None
            flat = image.getpalette() or []
    except Exception:  # noqa: BLE001 - any unreadable file means "no palette to take"
        return None
    if len(flat) < 3 * count:
        return None
    return [list(flat[3 * index : 3 * index + 3]) for index in range(count)]


def full_palette(palette: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """``(256, 3)`` uint8 colour table: the classes' colours, black after them, :data:`IGNORE_COLOUR`
    at 255 (unless the given palette defines entry 255 itself)."""
    colours = np.asarray(palette)
    if colours.ndim != 2 or colours.shape[1] != 3 or not 1 <= colours.shape[0] <= 256:
        raise ValueError(f"palette must be (N <= 256, 3), got shape {colours.shape}")
    if colours.min() < 0 or colours.max() > 255:
        raise ValueError("palette colours must lie in [0, 255]")
    table = np.zeros((256, 3), dtype=np.uint8)
    table[IGNORE_INDEX] = IGNORE_COLOUR
    table[: colours.shape[0]] = colours.astype(np.uint8)
    return table


def png_palette(palette: Sequence[Sequence[int]]) -> list[int]:
    """:func:`full_palette` flattened to the 768 values of ``PIL.Image.putpalette``."""
    return full_palette(palette).reshape(-1).tolist()


def palette_image(labels: np.ndarray, palette: Sequence[Sequence[int]] | np.ndarray) -> Image.Image:
    """A 'P'-mode image of the class indices ``labels`` ``(H, W)`` (uint8 range) with the palette."""
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="P")
    image.putpalette(png_palette(palette))
    return image


def save_label_png(
    path: str | os.PathLike, labels: np.ndarray, palette: Sequence[Sequence[int]] | np.ndarray
) -> Path:
    """Write ``labels`` ``(H, W)`` as a palette PNG, atomically (see :func:`protoseg.files.atomic_write`)."""
    image = palette_image(labels, palette)
    return atomic_write(path, lambda file: image.save(file, format="PNG"))


def colour_labels(labels: np.ndarray, palette: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """``(H, W)`` class indices -> ``(H, W, 3)`` uint8 colours of :func:`full_palette` (for pictures)."""
    return full_palette(palette)[np.asarray(labels, dtype=np.int64).clip(0, 255)]
