"""Bad data is found before the first iteration (existence and headers of every file of both splits),
with the file in a one-line error; files that passed are cached."""

from __future__ import annotations

import os
import shutil

import pytest
from PIL import Image

from protoseg.data.shapes import generate_shapes
from protoseg.data.voc import VOCDataset
from protoseg.engine.data_check import check_split_files
from tiny_runs import run_cli, train_args


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, size=64, num_train=8, num_val=4, seed=3)
    return root


@pytest.fixture
def shapes_root(pristine, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(pristine, root)
    return root


def fails_before_training(capsys, shapes_root, run_dir, *extra, **overrides) -> str:
    code, _, err = run_cli(capsys, *train_args(shapes_root, run_dir, **overrides), *extra)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert not (run_dir / "metrics.jsonl").exists()  # not one iteration ran
    assert not run_dir.exists()  # the failed start left no folder behind
    return err


def test_a_corrupt_validation_image_stops_the_run_before_training(shapes_root, tmp_path, capsys):
    broken = shapes_root / "JPEGImages" / "val_00002.jpg"
    broken.write_bytes(b"not a jpeg at all")
    err = fails_before_training(capsys, shapes_root, tmp_path / "run")
    assert f"validation split 'val' of {shapes_root}: 1 of 4 samples have bad files" in err
    assert f"cannot read image {broken}" in err


def test_a_missing_pseudo_mask_stops_the_run_before_training(shapes_root, tmp_path, capsys):
    pseudo = tmp_path / "pseudo"
    shutil.copytree(shapes_root / "SegmentationClass", pseudo)
    (pseudo / "train_00005.png").unlink()
    err = fails_before_training(capsys, shapes_root, tmp_path / "run", **{"data.label_dir": str(pseudo)})
    assert "training split 'train'" in err and f"mask file not found: {pseudo / 'train_00005.png'}" in err


def test_a_mask_of_another_size_is_named_with_its_image(shapes_root, tmp_path, capsys):
    mask = shapes_root / "SegmentationClass" / "train_00001.png"
    with Image.open(mask) as image:
        image.resize((32, 32)).save(mask)
    err = fails_before_training(capsys, shapes_root, tmp_path / "run")
    assert "size mismatch: image" in err and "train_00001.jpg is 64x64" in err and "is 32x32" in err


def test_several_bad_files_are_counted(shapes_root, tmp_path, capsys):
    for index in range(5):
        (shapes_root / "JPEGImages" / f"train_{index:05d}.jpg").unlink()
    err = fails_before_training(capsys, shapes_root, tmp_path / "run")
    assert "5 of 8 samples have bad files" in err and "(and 2 more)" in err


def test_checked_files_are_cached_until_they_change(shapes_root, monkeypatch, tmp_path):
    monkeypatch.setenv("PROTOSEG_CACHE_DIR", str(tmp_path / "cache"))
    dataset = VOCDataset(shapes_root, "train")
    assert check_split_files(dataset, "train") == 8
    assert check_split_files(dataset, "train") == 0
    image = shapes_root / "JPEGImages" / "train_00003.jpg"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert check_split_files(dataset, "train") == 1
    image.write_bytes(b"broken")
    with pytest.raises(ValueError, match="train_00003.jpg"):
        check_split_files(dataset, "train")
    with pytest.raises(ValueError, match="train_00003.jpg"):  # a failure is never cached
        check_split_files(dataset, "train")
