"""Datasets in their native layouts, written as tiny fixtures (16x24 images) by the tests."""

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.data import (
    FolderDataset,
    VOCDataset,
    build_dataset,
    build_transforms,
    save_cls_labels,
)
from protoseg.data.palette import VOC_CLASS_NAMES, png_palette, voc_palette

HEIGHT, WIDTH = 16, 24
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def write_image(path, seed, size=(HEIGHT, WIDTH)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_mask(path, mask, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="L")
    if palette:
        image = image.convert("P")
        image.putpalette(png_palette(voc_palette(21)))
    image.save(path)


def voc_mask(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[2:10, 3:12] = rng.integers(1, 21)
    mask[8:14, 14:22] = rng.integers(1, 21)
    mask[1, :] = 255  # a boundary line
    return mask


def expected_tags(mask, num_classes, has_background):
    """Brute-force reference: loop over every pixel."""
    tags = [0.0] * num_classes
    for value in np.asarray(mask).reshape(-1).tolist():
        if value != 255:
            tags[value] = 1.0
    return tags[1:] if has_background else tags


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC2012"
    names = ["2007_000001", "2007_000002", "2007_000003"]
    for seed, name in enumerate(names):
        write_image(root / "JPEGImages" / f"{name}.jpg", seed)
        write_mask(root / "SegmentationClass" / f"{name}.png", voc_mask(seed), palette=True)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000001\n2007_000002\n")
    (lists / "val.txt").write_text("2007_000003\n")
    # SBD-augmented training set: list in the root, with path pairs as some releases write them
    for seed, name in enumerate(["2007_000001", "2008_000009"]):
        write_image(root / "JPEGImages" / f"{name}.jpg", 10 + seed)
        write_mask(root / "SegmentationClassAug" / f"{name}.png", np.full((HEIGHT, WIDTH), 5 + seed))
    (root / "train_aug.txt").write_text(
        "/JPEGImages/2007_000001.jpg /SegmentationClassAug/2007_000001.png\n"
        "/JPEGImages/2008_000009.jpg /SegmentationClassAug/2008_000009.png\n"
    )
    return root


# ----------------------------------------------------------------------------- VOC
def test_voc_sample_contents(voc_root):
    dataset = VOCDataset(voc_root, "train")
    assert len(dataset) == 2 and dataset.num_classes == 21 and dataset.has_background
    assert dataset.class_names == list(VOC_CLASS_NAMES) and dataset.ignore_index == 255
    assert len(dataset.palette) == 21 and dataset.palette[1] == [128, 0, 0]
    sample = dataset[1]
    assert sample["name"] == "2007_000002"
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, HEIGHT, WIDTH)
    decoded = np.array(
        Image.open(voc_root / "JPEGImages" / "2007_000002.jpg").convert("RGB"), dtype=np.float64
    )
    np.testing.assert_allclose(
        sample["image"].permute(1, 2, 0).numpy(), (decoded / 255 - MEAN) / STD, atol=1e-5
    )
    assert sample["mask"].dtype == torch.int64
    assert np.array_equal(sample["mask"].numpy(), voc_mask(1))
    assert sample["tags"].dtype == torch.float32 and sample["tags"].shape == (20,)
    assert sample["tags"].tolist() == expected_tags(voc_mask(1), 21, True)
    assert sample["index"] == 1 and dataset[-1]["index"] == 1  # the position, for per-image state (OAA)
    assert sample["frame"].tolist() == [1.0, 0.0, 1.0, 0.0, HEIGHT, WIDTH]  # untransformed: identity
    assert dataset.image_path(1) == voc_root / "JPEGImages" / "2007_000002.jpg"
    image, mask = dataset.load_raw(1)
    assert image.mode == "RGB" and image.size == (WIDTH, HEIGHT) and mask.dtype == np.uint8
    assert np.array_equal(mask, voc_mask(1))
    assert dataset[-1]["name"] == "2007_000002"
    with pytest.raises(IndexError):
        dataset[2]


def test_voc_split_aug_classes_and_cls_labels(voc_root):
    assert [VOCDataset(voc_root, "val")[0]["name"]] == ["2007_000003"]
    augmented = VOCDataset(voc_root, "train", use_aug=True)
    assert augmented.names == ["2007_000001", "2008_000009"]
    assert augmented[1]["mask"].unique().tolist() == [6]
    assert VOCDataset(voc_root, "val", use_aug=True).names == ["2007_000003"]  # aug is for training only
    (voc_root / "classes.txt").write_text("\n".join(["background", *[f"c{i}" for i in range(1, 21)]]))
    assert VOCDataset(voc_root, "train").class_names[3] == "c3"
    tags = {"2007_000001": np.eye(20, dtype=np.float32)[4], "2007_000002": np.eye(20, dtype=np.float32)[7]}
    save_cls_labels(voc_root / "cls_labels.npy", tags)
    dataset = VOCDataset(voc_root, "train")
    assert dataset[0]["tags"].tolist() == tags["2007_000001"].tolist()
    with pytest.raises(ValueError, match=r"cls_labels\.npy.*2007_000003"):
        VOCDataset(voc_root, "val")[0]


def test_voc_label_dir_and_list_file(voc_root, tmp_path):
    pseudo = tmp_path / "pseudo"
    write_mask(pseudo / "2007_000001.png", np.full((HEIGHT, WIDTH), 3))
    write_mask(pseudo / "2007_000002.png", np.full((HEIGHT, WIDTH), 255))
    dataset = build_dataset("voc", str(voc_root), "train", label_dir=str(pseudo))
    assert dataset[0]["mask"].unique().tolist() == [3]
    assert dataset[1]["tags"].sum() == 0
    assert dataset.mask_path(0) == pseudo / "2007_000001.png"
    list_file = tmp_path / "subset.txt"
    list_file.write_text("2007_000003\n")
    assert build_dataset("voc", voc_root, "train", list_file=list_file).names == ["2007_000003"]


def test_training_item_is_seeded(voc_root):
    transforms = build_transforms(train=True, crop_size=(12, 12), color_jitter=0.2)
    dataset = VOCDataset(voc_root, "train", transforms=transforms)
    first, again = dataset[(0, 123)], dataset[(0, 123)]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    assert first["image"].shape == (3, 12, 12)
    others = [dataset[(0, seed)]["image"] for seed in range(5)]
    assert any(not torch.equal(first["image"], other) for other in others)
    # image-level tags are those of the whole image, not of the crop
    assert first["tags"].tolist() == expected_tags(voc_mask(0), 21, True)


# ----------------------------------------------------------------------------- errors
def test_errors_name_the_file(voc_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset("voc", str(tmp_path / "nowhere"), "train")
    with pytest.raises(FileNotFoundError, match="test.txt"):
        VOCDataset(voc_root, "test")
    with pytest.raises(ValueError, match=r"voc.*cityscapes.*ade20k.*cocostuff.*folder"):
        build_dataset("kitti", str(voc_root), "train")
    with pytest.raises(ValueError, match="use_aug"):
        build_dataset("folder", str(voc_root), "train", use_aug=True, num_classes=3)
    dataset = VOCDataset(voc_root, "train")

    (voc_root / "JPEGImages" / "2007_000001.jpg").rename(voc_root / "moved.jpg")
    with pytest.raises(FileNotFoundError, match="2007_000001.jpg"):
        dataset[0]
    (voc_root / "JPEGImages" / "2007_000001.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match="2007_000001.jpg"):
        dataset[0]

    (voc_root / "SegmentationClass" / "2007_000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="2007_000002.png"):
        dataset[1]
    write_mask(voc_root / "SegmentationClass" / "2007_000002.png", np.zeros((HEIGHT + 1, WIDTH)))
    with pytest.raises(ValueError, match=r"2007_000002\.jpg.*2007_000002\.png|size mismatch"):
        dataset[1]
    bad = voc_mask(1)
    bad[5, 5] = 30
    write_mask(voc_root / "SegmentationClass" / "2007_000002.png", bad)
    with pytest.raises(ValueError, match=r"2007_000002\.png.*\[30\]"):
        dataset[1]
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(
        voc_root / "SegmentationClass" / "2007_000002.png"
    )
    with pytest.raises(ValueError, match=r"2007_000002\.png.*single-channel"):
        dataset[1]
    with pytest.raises(ValueError, match="num_classes"):
        VOCDataset(voc_root, "train", num_classes=5)


# ----------------------------------------------------------------------------- Cityscapes
# Reference: cityscapesScripts labels.py, (labelId, trainId) of the 19 evaluated classes.
CITYSCAPES_PAIRS = [
    (7, 0), (8, 1), (11, 2), (12, 3), (13, 4), (17, 5), (19, 6), (20, 7), (21, 8), (22, 9), (23, 10),
    (24, 11), (25, 12), (26, 13), (27, 14), (28, 15), (31, 16), (32, 17), (33, 18),
]  # fmt: skip


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    all_ids = np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) % 36  # every labelId 0..33 plus 34, 35
    all_ids[0, 0] = 255
    for city, frame in [("aachen", "000000_000019"), ("bochum", "000001_000019")]:
        stem = f"{city}_{frame}"
        write_image(tmp_path / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png", 0)
        write_mask(tmp_path / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png", all_ids)
    dataset = build_dataset("cityscapes", str(tmp_path), "train")
    assert dataset.names == ["aachen_000000_000019", "bochum_000001_000019"]
    assert dataset.num_classes == 19 and not dataset.has_background and len(dataset.palette) == 19
    mask = dataset[1]["mask"].numpy()
    table = dict(CITYSCAPES_PAIRS)
    for y in range(HEIGHT):
        for x in range(WIDTH):
            assert mask[y, x] == table.get(int(all_ids[y, x]), 255)
    assert dataset[0]["tags"].shape == (19,) and dataset[0]["tags"].sum() == 19
    pseudo = tmp_path / "pseudo"
    write_mask(pseudo / "aachen_000000_000019.png", np.full((HEIGHT, WIDTH), 18))
    assert build_dataset("cityscapes", tmp_path, "train", label_dir=pseudo)[0]["mask"].unique().tolist() == [
        18
    ]
    with pytest.raises(FileNotFoundError, match="val"):
        build_dataset("cityscapes", tmp_path, "val")


# ----------------------------------------------------------------------------- ADE20K
def test_ade20k_reduce_zero_label(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    raw = (np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) % 151).astype(np.uint8)
    write_image(base / "images" / "training" / "ADE_train_00000001.jpg", 0)
    write_mask(base / "annotations" / "training" / "ADE_train_00000001.png", raw)
    write_image(base / "images" / "validation" / "ADE_val_00000001.jpg", 1)
    write_mask(base / "annotations" / "validation" / "ADE_val_00000001.png", raw)
    for root, split in [(tmp_path, "train"), (base, "training"), (tmp_path, "val")]:
        dataset = build_dataset("ade20k", str(root), split)
        assert len(dataset) == 1 and dataset.num_classes == 150 and not dataset.has_background
        mask = dataset[0]["mask"].numpy()
        expected = np.array([[255 if value == 0 else value - 1 for value in row] for row in raw.tolist()])
        assert np.array_equal(mask, expected)
    assert dataset[0]["tags"].sum() == 150
    bad = raw.copy()
    bad[0, 1] = 151
    write_mask(base / "annotations" / "training" / "ADE_train_00000001.png", bad)
    with pytest.raises(ValueError, match=r"ADE_train_00000001\.png.*151"):
        build_dataset("ade20k", tmp_path, "train")[0]
    with pytest.raises(ValueError, match="split"):
        build_dataset("ade20k", tmp_path, "test")


# ----------------------------------------------------------------------------- COCO-Stuff
def coco_reference_train_id(raw_value):
    """Independent reference: COCO category ids (1-based) used by the 80 thing classes and the
    91 stuff classes (92..182); a raw stuffthingmaps value is the category id minus 1."""
    things = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
              *range(72, 83), *range(84, 91)]  # fmt: skip
    used = things + list(range(92, 183))
    assert len(things) == 80 and len(used) == 171
    category = raw_value + 1
    return used.index(category) if category in used else 255


def test_cocostuff_raw_mapping_and_train_ids(tmp_path):
    raw = np.concatenate([np.arange(182), np.full(HEIGHT * WIDTH - 182, 255)]).reshape(HEIGHT, WIDTH)
    write_image(tmp_path / "images" / "train2017" / "000000000009.jpg", 0)
    write_mask(tmp_path / "annotations" / "train2017" / "000000000009.png", raw)
    dataset = build_dataset("cocostuff", str(tmp_path), "train")
    assert dataset.mask_format == "raw" and dataset.num_classes == 171 and not dataset.has_background
    mask = dataset[0]["mask"].numpy()
    for y in range(HEIGHT):
        for x in range(WIDTH):
            value = int(raw[y, x])
            assert mask[y, x] == (255 if value == 255 else coco_reference_train_id(value))
    assert dataset[0]["tags"].sum() == 171
    # converted labelTrainIds files are preferred and read as they are
    train_ids = np.full((HEIGHT, WIDTH), 170)
    train_ids[0] = 255
    write_mask(tmp_path / "annotations" / "train2017" / "000000000009_labelTrainIds.png", train_ids)
    converted = build_dataset("cocostuff", tmp_path, "train2017")
    assert converted.mask_format == "train_ids"
    assert np.array_equal(converted[0]["mask"].numpy(), train_ids)
    write_mask(
        tmp_path / "annotations" / "train2017" / "000000000009_labelTrainIds.png",
        np.full((HEIGHT, WIDTH), 171),
    )
    with pytest.raises(ValueError, match=r"_labelTrainIds\.png.*171"):
        build_dataset("cocostuff", tmp_path, "train")[0]


# ----------------------------------------------------------------------------- folder
def test_folder_dataset(tmp_path):
    for index in range(3):
        write_image(tmp_path / "images" / f"img{index}.png", index)
        write_mask(tmp_path / "masks" / f"img{index}.png", np.full((HEIGHT, WIDTH), index))
    with pytest.raises(ValueError, match="classes.txt"):
        build_dataset("folder", str(tmp_path), "train")
    dataset = build_dataset("folder", str(tmp_path), "train", num_classes=4)
    assert dataset.class_names == ["class_0", "class_1", "class_2", "class_3"] and not dataset.has_background
    assert dataset.names == ["img0", "img1", "img2"]
    assert dataset[2]["mask"].unique().tolist() == [2] and dataset[2]["tags"].tolist() == [0, 0, 1, 0]
    decoded = np.array(Image.open(tmp_path / "images" / "img2.png"), dtype=np.float64)
    np.testing.assert_allclose(
        dataset[2]["image"].permute(1, 2, 0).numpy(), (decoded / 255 - MEAN) / STD, atol=1e-5
    )

    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    (tmp_path / "val.txt").write_text("img2\nimg1\n")
    val = FolderDataset(tmp_path, "val")
    assert val.names == ["img2", "img1"] and val.has_background and val.num_classes == 3
    assert val[0]["tags"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="num_classes"):
        FolderDataset(tmp_path, "val", num_classes=5)
    (tmp_path / "val.txt").write_text("img2\nimg7\n")
    with pytest.raises(FileNotFoundError, match="img7"):
        FolderDataset(tmp_path, "val")
    tag_csv = tmp_path / "tags.csv"
    tag_csv.write_text("img0,dog\nimg1,cat;dog\nimg2,\n")
    tagged = FolderDataset(tmp_path, "train", tag_file=tag_csv)
    assert tagged[1]["tags"].tolist() == [1, 1]
    write_mask(tmp_path / "masks" / "img0.png", np.full((HEIGHT, WIDTH), 3))
    with pytest.raises(ValueError, match=r"img0\.png.*\[3\]"):
        tagged[0]


def test_folder_split_subfolders(tmp_path):
    write_image(tmp_path / "images" / "train" / "a.jpg", 0)
    write_mask(tmp_path / "masks" / "train" / "a.png", np.ones((HEIGHT, WIDTH)))
    write_image(tmp_path / "images" / "val" / "b.jpg", 1)
    write_mask(tmp_path / "masks" / "val" / "b.png", np.zeros((HEIGHT, WIDTH)))
    assert FolderDataset(tmp_path, "train", num_classes=2).names == ["a"]
    val = FolderDataset(tmp_path, "val", num_classes=2)
    assert val.names == ["b"] and val.mask_path(0) == tmp_path / "masks" / "val" / "b.png"
    assert val[0]["mask"].sum() == 0
