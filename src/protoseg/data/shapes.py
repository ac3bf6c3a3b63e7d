"""The built-in "shapes" benchmark: a seeded procedural segmentation dataset in Pascal VOC layout.

Class identity is the SHAPE (10 foreground classes + background); colour, texture, scale and
rotation are nuisances drawn independently of the class. Each class appears in 3 of 4
appearance modes (filled / outlined / striped / dotted), so one prototype per class cannot cover
a class: the multi-prototype claims of ProtoSeg have something to show. Backgrounds come in 4
modes (gradient / smooth noise / stripes / checker) with line clutter; 1-4 objects per image,
later ones occluding earlier ones (masks follow the visible region); a 1-pixel ignore band (255)
runs along every visible object boundary, as in VOC. For outlined and dotted objects the mask is
still the full shape region, so the network has to infer the region from the outline or dots.

Shapes are rasterised from signed distance functions on the pixel-centre grid (vectorised numpy,
anti-aliased image edges), so generating the default 1000 / 250 images takes seconds.

Layout written to ``out_dir``::

    JPEGImages/<id>.jpg                         quality 95
    SegmentationClass/<id>.png                  palette PNG, 255 = ignore band
    ImageSets/Segmentation/{train,val,trainval}.txt
    cls_labels.npy                              {id: float32 multi-hot over the 10 foreground classes}
    classes.txt                                 background first
    shapes_meta.json                            generation settings and per-image objects (class, mode)
"""

from __future__ import annotations

import colorsys
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_write, atomic_write_text
from .palette import save_label_png
from .tags import save_cls_labels, tags_from_mask

SHAPES_CLASS_NAMES: tuple[str, ...] = (
    "background", "disc", "square", "triangle", "star", "ring", "cross", "hexagon", "crescent",
    "heart", "arrow",
)  # fmt: skip
SHAPES_PALETTE: list[list[int]] = [
    [0, 0, 0],  # background
    [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [128, 128, 0],
]  # fmt: skip
"""Black background and ten colours that stand apart from it (luminance > 60), from each other (RGB
distance > 100) and from the ignore colour; the mask PNGs carry it, and the VOC loader reads a dataset's
palette from its masks, so predictions and pictures use it too."""
APPEARANCE_MODES: tuple[str, ...] = ("filled", "outlined", "striped", "dotted")
# Each foreground class leaves out one appearance mode (rotating), so every class has 3 modes.
SHAPES_CLASS_MODES: dict[str, tuple[str, ...]] = {
    name: tuple(mode for position, mode in enumerate(APPEARANCE_MODES) if position != (label - 1) % 4)
    for label, name in enumerate(SHAPES_CLASS_NAMES)
    if label > 0
}
BACKGROUND_MODES: tuple[str, ...] = ("gradient", "noise", "stripes", "checker")
SPLIT_CODES = {"train": 0, "val": 1}

MIN_RADIUS, MAX_RADIUS = 0.12, 0.3  # object radius as a fraction of the image size
MIN_VISIBLE_FRACTION = 0.5  # occlusion may hide at most half of an earlier object
MIN_VISIBLE_PIXELS = 60
PLACEMENT_ATTEMPTS = 30
MIN_COLOUR_DISTANCE = 0.35  # RGB distance (in [0, 1] units) between an object and the background


# ----------------------------------------------------------------------------- signed distances
def _length(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.sqrt(x * x + y * y)


def _box_sdf(u: np.ndarray, v: np.ndarray, half_width: float, half_height: float) -> np.ndarray:
    qx, qy = np.abs(u) - half_width, np.abs(v) - half_height
    return _length(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _polygon_sdf(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed distance to a simple polygon (negative inside): nearest edge + crossing parity."""
    squared = (u - vertices[0, 0]) ** 2 + (v - vertices[0, 1]) ** 2
    inside = np.zeros(u.shape, dtype=bool)
    for index in range(len(vertices)):
        (x0, y0), (x1, y1) = vertices[index], vertices[index - 1]
        edge_x, edge_y = x1 - x0, y1 - y0
        offset_x, offset_y = u - x0, v - y0
        along = np.clip((offset_x * edge_x + offset_y * edge_y) / (edge_x**2 + edge_y**2), 0.0, 1.0)
        squared = np.minimum(squared, (offset_x - edge_x * along) ** 2 + (offset_y - edge_y * along) ** 2)
        above, below = v >= y0, v < y1
        left = edge_x * offset_y > edge_y * offset_x
        inside ^= (above & below & left) | (~above & ~below & ~left)
    return np.where(inside, -1.0, 1.0).astype(u.dtype) * np.sqrt(squared)


def _regular_polygon(count: int, radius: float, phase: float = np.pi / 2) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(count) / count
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    angles = np.pi / 2 + np.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_TRIANGLE = _regular_polygon(3, 1.08)
_HEXAGON = _regular_polygon(6, 0.95, phase=0.0)
_STAR = _star(5, 1.05, 0.45)
_ARROW = np.array(
    [[-0.95, -0.2], [0.15, -0.2], [0.15, -0.62], [0.97, 0.0], [0.15, 0.62], [0.15, 0.2], [-0.95, 0.2]]
)
_HEART_DIAMOND = np.array([[0.0, -0.55], [0.7, 0.15], [0.0, 0.85], [-0.7, 0.15]])


def _shape_sdf(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (in object radii, negative inside) of class ``label`` at local coords (u, v)."""
    name = SHAPES_CLASS_NAMES[label]
    if name == "disc":
        return _length(u, v) - 0.92
    if name == "square":
        return _box_sdf(u, v, 0.74, 0.74)
    if name == "triangle":
        return _polygon_sdf(u, v + 0.1, _TRIANGLE)
    if name == "star":
        return _polygon_sdf(u, v, _STAR)
    if name == "ring":
        return np.abs(_length(u, v) - 0.7) - 0.24
    if name == "cross":
        return np.minimum(_box_sdf(u, v, 0.95, 0.3), _box_sdf(u, v, 0.3, 0.95))
    if name == "hexagon":
        return _polygon_sdf(u, v, _HEXAGON)
    if name == "crescent":
        return np.maximum(_length(u, v) - 0.92, 0.72 - _length(u - 0.42, v))
    if name == "heart":
        lobes = np.minimum(_length(u - 0.35, v + 0.2), _length(u + 0.35, v + 0.2)) - 0.495
        return np.minimum(_polygon_sdf(u, v, _HEART_DIAMOND), lobes)
    if name == "arrow":
        return _polygon_sdf(u, v, _ARROW)
    raise ValueError(f"unknown shape class {label}")


# ----------------------------------------------------------------------------- colours and textures
def _random_colour(rng: np.random.Generator, saturation=(0.25, 1.0), value=(0.25, 1.0)) -> np.ndarray:
    hue = rng.random()
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb, dtype=np.float32)


def _contrasting_colour(rng: np.random.Generator, avoid: list[np.ndarray], distance: float) -> np.ndarray:
    """A random colour at least ``distance`` (RGB) from every colour in ``avoid`` (best of 50 tries)."""
    best, best_distance = None, -1.0
    for _ in range(50):
        colour = _random_colour(rng)
        nearest = min(float(np.linalg.norm(colour - other)) for other in avoid)
        if nearest >= distance:
            return colour
        if nearest > best_distance:
            best, best_distance = colour, nearest
    return best


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Bilinearly interpolated random values in [-1, 1] on a (cells + 1)^2 lattice, shape (H, W)."""
    lattice = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1)).astype(np.float32)

    def interpolation(size: int) -> np.ndarray:
        position = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
        lower = np.minimum(np.floor(position).astype(np.int64), cells - 1)
        fraction = position - lower
        matrix = np.zeros((size, cells + 1), dtype=np.float32)
        matrix[np.arange(size), lower] = 1 - fraction
        matrix[np.arange(size), lower + 1] = fraction
        return matrix

    return interpolation(height) @ lattice @ interpolation(width).T


def _soft_step(signed: np.ndarray) -> np.ndarray:
    """Anti-aliased indicator of ``signed > 0`` for a signed distance in pixels."""
    return np.clip(signed + 0.5, 0.0, 1.0)


def _background(rng: np.random.Generator, size: int, ys: np.ndarray, xs: np.ndarray):
    mode = BACKGROUND_MODES[rng.integers(len(BACKGROUND_MODES))]
    first = _random_colour(rng, saturation=(0.0, 0.8), value=(0.15, 0.95))
    second = _contrasting_colour(rng, [first], 0.15)
    angle = rng.uniform(0, 2 * np.pi)
    along = xs * np.cos(angle) + ys * np.sin(angle)
    if mode == "gradient":
        weight = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    elif mode == "noise":
        weight = 0.5 + 0.5 * _smooth_noise(rng, size, size, int(rng.integers(2, 9)))
    elif mode == "stripes":
        period = rng.uniform(6.0, 20.0)
        weight = _soft_step(np.sin(2 * np.pi * along / period) * period / (2 * np.pi))
    else:
        cell = rng.uniform(6.0, 18.0)
        across = -xs * np.sin(angle) + ys * np.cos(angle)
        product = np.sin(np.pi * along / cell) * np.sin(np.pi * across / cell)
        weight = _soft_step(product * cell / np.pi)
    image = first + (second - first) * weight[..., None]
    for _ in range(int(rng.integers(0, 4))):  # clutter: thin line segments, labelled background
        start, end = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        width = rng.uniform(1.0, 2.5)
        direction = end - start
        along_segment = np.clip(
            ((xs - start[0]) * direction[0] + (ys - start[1]) * direction[1])
            / max(direction @ direction, 1e-6),
            0,
            1,
        )
        distance = _length(
            xs - start[0] - direction[0] * along_segment, ys - start[1] - direction[1] * along_segment
        )
        alpha = _soft_step(width / 2 - distance)[..., None]
        image = image * (1 - alpha) + _random_colour(rng) * alpha
    return image.astype(np.float32), mode, [first, second]


# ----------------------------------------------------------------------------- objects
def _place_object(rng, label: int, size: int, ys: np.ndarray, xs: np.ndarray):
    """Random pose of one object; returns its window, local coordinates and signed distance (px)."""
    radius = rng.uniform(MIN_RADIUS, MAX_RADIUS) * size
    angle = rng.uniform(0, 2 * np.pi)
    centre_y, centre_x = rng.uniform(0.55 * radius, size - 0.55 * radius, 2)
    extent = 1.1 * radius + 2
    top, bottom = max(0, int(centre_y - extent)), min(size, int(np.ceil(centre_y + extent)) + 1)
    left, right = max(0, int(centre_x - extent)), min(size, int(np.ceil(centre_x + extent)) + 1)
    window = (slice(top, bottom), slice(left, right))
    offset_y, offset_x = ys[window] - centre_y, xs[window] - centre_x
    u = (np.cos(angle) * offset_x + np.sin(angle) * offset_y) / radius
    v = (-np.sin(angle) * offset_x + np.cos(angle) * offset_y) / radius
    signed = _shape_sdf(label, u, v) * radius
    pose = {"radius": round(float(radius), 2), "angle": round(float(angle), 3),
            "centre": [round(float(centre_y), 2), round(float(centre_x), 2)]}  # fmt: skip
    return window, u * radius, v * radius, signed.astype(np.float32), pose


def _appearance(rng, mode: str, signed: np.ndarray, u: np.ndarray, v: np.ndarray, radius: float, avoid):
    """Colour (h, w, 3) and opacity (h, w) of an object in its window, for appearance ``mode``."""
    coverage = _soft_step(-signed)
    colour = _contrasting_colour(rng, avoid, MIN_COLOUR_DISTANCE)
    height, width = signed.shape
    texture = 1 + rng.uniform(0.0, 0.3) * _smooth_noise(rng, height, width, int(rng.integers(1, 5)))
    if mode == "filled":
        return colour * texture[..., None], coverage
    if mode == "outlined":
        thickness = float(np.clip(0.14 * radius, 2.0, 5.0))
        return np.broadcast_to(colour, (height, width, 3)), coverage * _soft_step(signed + thickness)
    pattern_angle = rng.uniform(0, np.pi)
    along = u * np.cos(pattern_angle) + v * np.sin(pattern_angle)
    if mode == "striped":
        second = _contrasting_colour(rng, [colour, *avoid], 0.25)
        period = rng.uniform(4.0, 8.0)
        weight = _soft_step(np.sin(2 * np.pi * along / period) * period / (2 * np.pi))[..., None]
        return (colour + (second - colour) * weight) * texture[..., None], coverage
    spacing = rng.uniform(4.5, 7.0)
    across = -u * np.sin(pattern_angle) + v * np.cos(pattern_angle)
    grid_along, grid_across = along / spacing, across / spacing
    distance = _length(grid_along - np.round(grid_along), grid_across - np.round(grid_across)) * spacing
    dots = _soft_step(rng.uniform(0.28, 0.4) * spacing - distance)
    return np.broadcast_to(colour, (height, width, 3)), coverage * dots


def render_shapes_sample(rng: np.random.Generator, size: int = 128, boundary_ignore: bool = True):
    """One image and its mask.

    Returns ``(image uint8 (size, size, 3), mask uint8 (size, size), info)``: mask values are
    class indices (0 = background), 255 on the 1-pixel boundary band when ``boundary_ignore``;
    ``info`` lists the background mode and every object (class, mode, pose, visible pixels).
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    image, background_mode, background_colours = _background(rng, size, ys, xs)
    owner = np.full((size, size), -1, dtype=np.int64)
    objects, areas = [], []
    for _ in range(int(rng.integers(1, 5))):
        label = int(rng.integers(1, len(SHAPES_CLASS_NAMES)))
        modes = SHAPES_CLASS_MODES[SHAPES_CLASS_NAMES[label]]
        mode = modes[rng.integers(len(modes))]
        for _attempt in range(PLACEMENT_ATTEMPTS):
            window, u, v, signed, pose = _place_object(rng, label, size, ys, xs)
            inside = signed < 0
            area = int(inside.sum())
            covered = owner[window][inside]
            remaining = [area_k - int((covered == k).sum()) for k, area_k in enumerate(areas)]
            if area >= MIN_VISIBLE_PIXELS and all(
                left >= max(MIN_VISIBLE_FRACTION * areas[k], MIN_VISIBLE_PIXELS)
                for k, left in enumerate(remaining)
            ):
                break
        else:
            continue  # no acceptable pose: drop this object
        owner[window][inside] = len(objects)
        areas.append(area)
        objects.append((label, mode, window, u, v, signed, pose))

    mask = np.zeros((size, size), dtype=np.uint8)
    info_objects = []
    for index, (label, mode, window, u, v, signed, pose) in enumerate(objects):
        colour, alpha = _appearance(rng, mode, signed, u, v, pose["radius"], background_colours)
        region = image[window]
        image[window] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
        mask_window = mask[window]
        mask_window[signed < 0] = label
        if boundary_ignore:
            mask_window[np.abs(signed) < 0.5] = 255
        info_objects.append({"class": SHAPES_CLASS_NAMES[label], "mode": mode, **pose,
                             "visible_pixels": int((owner == index).sum())})  # fmt: skip
    image = image + rng.normal(0.0, rng.uniform(0.005, 0.03), size=image.shape).astype(np.float32)
    image_uint8 = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    return image_uint8, mask, {"background": background_mode, "objects": info_objects}


def generate_shapes(
    out_dir: str | Path,
    size: int = 128,
    num_train: int = 1000,
    num_val: int = 250,
    seed: int = 0,
    boundary_ignore: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write the shapes benchmark to ``out_dir`` in Pascal VOC layout (see the module docstring).

    Image ``i`` of split ``s`` is drawn from ``np.random.default_rng([seed, split_code(s), i])``, so
    the same seed gives byte-identical files and the splits never share an image. Returns a
    summary: counts, class names, seconds, objects-per-image histogram, images per class and
    objects per (class, mode). Every file is written atomically. ``progress(done, total)`` is called
    after each image.
    """
    if size < 32:
        raise ValueError(f"shapes: size must be >= 32, got {size}")
    if num_train < 0 or num_val < 0:
        raise ValueError(f"shapes: image counts must be >= 0, got num_train={num_train}, num_val={num_val}")
    start = time.perf_counter()
    root = Path(out_dir)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    num_classes = len(SHAPES_CLASS_NAMES)
    cls_labels: dict[str, np.ndarray] = {}
    metadata: dict[str, dict] = {}
    objects_per_image = {count: 0 for count in range(1, 5)}
    images_per_class = dict.fromkeys(SHAPES_CLASS_NAMES[1:], 0)
    objects_per_mode = {name: dict.fromkeys(modes, 0) for name, modes in SHAPES_CLASS_MODES.items()}
    done, total = 0, num_train + num_val
    for split, count in (("train", num_train), ("val", num_val)):
        names = []
        for index in range(count):
            name = f"{split}_{index:05d}"
            rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
            image, mask, info = render_shapes_sample(rng, size, boundary_ignore)
            picture = Image.fromarray(image)
            atomic_write(
                root / "JPEGImages" / f"{name}.jpg",
                lambda file, picture=picture: picture.save(file, format="JPEG", quality=95, subsampling=0),
            )
            save_label_png(root / "SegmentationClass" / f"{name}.png", mask, SHAPES_PALETTE)
            tags = tags_from_mask(mask, num_classes, has_background=True)
            cls_labels[name] = tags
            metadata[name] = info
            names.append(name)
            objects_per_image[len(info["objects"])] += 1
            for class_name, present in zip(SHAPES_CLASS_NAMES[1:], tags):
                images_per_class[class_name] += int(present)
            for item in info["objects"]:
                objects_per_mode[item["class"]][item["mode"]] += 1
            done += 1
            if progress is not None:
                progress(done, total)
        atomic_write_text(
            root / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{n}\n" for n in names)
        )
    split_lists = [(root / "ImageSets" / "Segmentation" / f"{s}.txt").read_text() for s in ("train", "val")]
    atomic_write_text(root / "ImageSets" / "Segmentation" / "trainval.txt", "".join(split_lists))
    atomic_write_text(root / "classes.txt", "".join(f"{name}\n" for name in SHAPES_CLASS_NAMES))
    save_cls_labels(root / "cls_labels.npy", cls_labels)
    settings = {"size": size, "num_train": num_train, "num_val": num_val, "seed": seed,
                "boundary_ignore": boundary_ignore, "class_names": list(SHAPES_CLASS_NAMES),
                "class_modes": {name: list(modes) for name, modes in SHAPES_CLASS_MODES.items()}}  # fmt: skip
    atomic_write_text(
        root / "shapes_meta.json", json.dumps({"settings": settings, "images": metadata}, indent=1)
    )
    return {
        "root": str(root),
        **settings,
        "seconds": round(time.perf_counter() - start, 2),
        "objects_per_image": objects_per_image,
        "images_per_class": images_per_class,
        "objects_per_mode": objects_per_mode,
    }
