"""The synthetic shapes benchmark: determinism, layout, statistics, shape geometry."""

import hashlib
import json
import time

import numpy as np
import pytest
from PIL import Image

from protoseg.data import VOCDataset, load_cls_labels
from protoseg.data.shapes import (
    APPEARANCE_MODES,
    SHAPES_CLASS_MODES,
    SHAPES_CLASS_NAMES,
    SHAPES_PALETTE,
    _polygon_sdf,
    _shape_sdf,
    generate_shapes,
)

NUM_TRAIN, NUM_VAL, SIZE = 40, 8, 96


def digest(root):
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    summary = generate_shapes(root, size=SIZE, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=3)
    return root, summary


def test_same_seed_identical_bytes_other_seed_differs(tmp_path):
    generate_shapes(tmp_path / "a", size=64, num_train=6, num_val=2, seed=5)
    generate_shapes(tmp_path / "b", size=64, num_train=6, num_val=2, seed=5)
    generate_shapes(tmp_path / "c", size=64, num_train=6, num_val=2, seed=6)
    first, second, third = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert first == second and len(first) == 2 * 8 + 6  # 8 jpg + 8 png + 3 lists + tags, classes, meta
    assert first["JPEGImages/train_00000.jpg"] != third["JPEGImages/train_00000.jpg"]


def test_voc_layout_and_loader(shapes_root):
    root, summary = shapes_root
    assert (root / "classes.txt").read_text().split() == list(SHAPES_CLASS_NAMES)
    dataset = VOCDataset(root, "train")
    assert len(dataset) == NUM_TRAIN and len(VOCDataset(root, "val")) == NUM_VAL
    assert dataset.num_classes == 11 and dataset.class_names == list(SHAPES_CLASS_NAMES)
    assert summary["class_names"] == list(SHAPES_CLASS_NAMES) and summary["seconds"] > 0
    mask_file = Image.open(root / "SegmentationClass" / "train_00000.png")
    assert mask_file.mode == "P" and mask_file.getpalette()[3:6] == SHAPES_PALETTE[1]
    assert Image.open(root / "JPEGImages" / "train_00000.jpg").size == (SIZE, SIZE)
    tags = load_cls_labels(root / "cls_labels.npy")
    assert len(tags) == NUM_TRAIN + NUM_VAL
    for index in range(0, NUM_TRAIN, 7):
        sample = dataset[index]
        mask = sample["mask"].numpy()
        present = [float(np.any(mask == label)) for label in range(1, 11)]
        assert sample["tags"].tolist() == present == tags[sample["name"]].tolist()
    train_images = {Image.open(root / "JPEGImages" / f"train_{i:05d}.jpg").tobytes() for i in range(NUM_VAL)}
    val_images = {Image.open(root / "JPEGImages" / f"val_{i:05d}.jpg").tobytes() for i in range(NUM_VAL)}
    assert not train_images & val_images


def test_statistics(shapes_root):
    root, summary = shapes_root
    meta = json.loads((root / "shapes_meta.json").read_text())["images"]
    objects_per_image = [len(info["objects"]) for info in meta.values()]
    assert min(objects_per_image) >= 1 and max(objects_per_image) <= 4
    assert len(set(objects_per_image)) == 4
    assert all(count > 0 for count in summary["images_per_class"].values())  # every class appears
    modes_seen = {name: set() for name in SHAPES_CLASS_NAMES[1:]}
    backgrounds = set()
    for name, info in meta.items():
        backgrounds.add(info["background"])
        mask = np.array(Image.open(root / "SegmentationClass" / f"{name}.png"))
        labels = {SHAPES_CLASS_NAMES.index(item["class"]) for item in info["objects"]}
        assert labels == set(np.unique(mask).tolist()) - {0, 255}  # occlusion never hides an object
        for item in info["objects"]:
            assert item["mode"] in SHAPES_CLASS_MODES[item["class"]]
            modes_seen[item["class"]].add(item["mode"])
        # the ignore band is thin: almost no ignore pixel has only ignore 4-neighbours
        ignore = np.pad(mask == 255, 1)
        interior = (
            ignore[1:-1, 1:-1] & ignore[:-2, 1:-1] & ignore[2:, 1:-1] & ignore[1:-1, :-2] & ignore[1:-1, 2:]
        )
        assert interior.sum() <= 0.05 * max(1, (mask == 255).sum())
    assert all(len(modes) == 3 for modes in SHAPES_CLASS_MODES.values())
    assert all(set(modes) <= set(APPEARANCE_MODES) for modes in SHAPES_CLASS_MODES.values())
    assert all(len(seen) >= 2 for seen in modes_seen.values())
    assert len(backgrounds) >= 3


def test_outlined_objects_are_labelled_as_full_regions(shapes_root):
    root, _ = shapes_root
    meta = json.loads((root / "shapes_meta.json").read_text())["images"]
    checked = 0
    for name, info in meta.items():
        if len(info["objects"]) != 1 or info["objects"][0]["mode"] != "outlined":
            continue
        item = info["objects"][0]
        mask = np.array(Image.open(root / "SegmentationClass" / f"{name}.png"))
        label = SHAPES_CLASS_NAMES.index(item["class"])
        region = (mask == label).sum() + 0.5 * (mask == 255).sum()
        # a full region has about the shape's area; an outline alone would be far smaller
        assert abs(region - item["visible_pixels"]) < 0.1 * item["visible_pixels"]
        checked += 1
    assert checked >= 1


AREAS = {  # closed-form areas at unit radius
    "disc": np.pi * 0.92**2,
    "square": 1.48**2,
    "triangle": 3 * np.sqrt(3) / 4 * 1.08**2,
    "ring": np.pi * (0.94**2 - 0.46**2),
    "hexagon": 3 * np.sqrt(3) / 2 * 0.95**2,
    "cross": 2 * 1.9 * 0.6 - 0.6**2,
}


@pytest.mark.parametrize("name", sorted(AREAS))
def test_shape_areas(name):
    grid = (np.arange(800) + 0.5) / 400 - 1.0
    u, v = np.meshgrid(grid, grid)
    area = (_shape_sdf(SHAPES_CLASS_NAMES.index(name), u, v) < 0).mean() * 4.0
    assert area == pytest.approx(AREAS[name], rel=0.01)


def test_polygon_sdf_matches_brute_force():
    vertices = np.array([[-0.5, -0.4], [0.6, -0.3], [0.1, 0.2], [0.5, 0.7], [-0.6, 0.5]])
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (200, 2))
    signed = _polygon_sdf(points[:, 0], points[:, 1], vertices)
    edges = [(vertices[i], vertices[(i + 1) % 5]) for i in range(5)]
    for point, value in zip(points, signed):
        samples = np.concatenate([a + np.linspace(0, 1, 2001)[:, None] * (b - a) for a, b in edges])
        nearest = np.sqrt(((samples - point) ** 2).sum(1)).min()  # densely sampled boundary
        crossings = 0  # ray casting to +x
        for a, b in edges:
            if (a[1] > point[1]) != (b[1] > point[1]):
                x_cross = a[0] + (point[1] - a[1]) * (b[0] - a[0]) / (b[1] - a[1])
                crossings += x_cross > point[0]
        expected = -nearest if crossings % 2 else nearest
        assert value == pytest.approx(expected, abs=1e-3)


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        generate_shapes(tmp_path, size=16, num_train=1, num_val=0)
    with pytest.raises(ValueError, match="num_train"):
        generate_shapes(tmp_path, num_train=-1)


def test_generation_speed_print(tmp_path):
    """Times 60 images at the default 128 px and extrapolates to the default 1000 / 250 (not asserted)."""
    start = time.perf_counter()
    generate_shapes(tmp_path, size=128, num_train=50, num_val=10, seed=0)
    seconds = time.perf_counter() - start
    print(
        f"\nshapes: 60 images at 128 px in {seconds:.2f} s -> about {seconds / 60 * 1250:.0f} s for 1000/250"
    )


def test_make_data_writes_synthetic_saliency_maps_with_the_images(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from protoseg.cli import main

    out = tmp_path / "shapes"
    args = ["make-data", "shapes", "--out", str(out), "--size", "64", "--num-train", "3", "--num-val", "1"]
    assert main([*args, "--saliency", "0.7", "--no-progress"]) == 0
    ids = (out / "ImageSets/Segmentation/train.txt").read_text().split()
    for name in ids:
        saliency = np.asarray(Image.open(out / "SaliencyMaps" / f"{name}.png"))
        assert saliency.shape == (64, 64) and saliency.max() > 0
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--saliency", "1.5", "--overwrite"])
    assert exit_info.value.code == 2 and "--saliency" in capsys.readouterr().err
