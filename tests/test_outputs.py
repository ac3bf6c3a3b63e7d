"""Commands that write outputs never touch their inputs, refuse two outputs with one name, and write
each file atomically: after a crash or a full disk, every output file is complete or absent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protoseg.config import load_config
from protoseg.data.shapes import SHAPES_CLASS_NAMES, generate_shapes
from protoseg.engine.trainer import Trainer
from protoseg.files import OutputPlan, atomic_write_text
from protoseg.wsss.cam_inference import save_cam
from tiny_runs import CONFIG, FullDisk, run_cli, tiny_overrides


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, size=64, num_train=8, num_val=4, seed=3)
    return root


@pytest.fixture(scope="module")
def run_dir(shapes_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "linear"
    cfg = load_config(CONFIG, tiny_overrides(shapes_root, **{"train.iterations": 2, "train.val_interval": 2}))
    trainer = Trainer(cfg, run, progress=False)
    trainer.train()
    trainer.close()
    return run


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_complete_or_absent(folder: Path) -> None:
    """Every file under ``folder`` is complete (decodes), and no temporary file is left."""
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        assert not path.name.endswith(".tmp"), f"temporary file left: {path}"
        if path.suffix in (".png", ".jpg"):
            with Image.open(path) as image:
                image.load()
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".txt":
            assert path.read_text().endswith("\n"), f"partial list {path}"


def image_folder(tmp_path: Path, shapes_root: Path, names: dict[str, str]) -> dict[str, Path]:
    """Copies of shapes images at ``tmp_path / relative`` for each ``relative: source name``."""
    written = {}
    for relative, name in names.items():
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(shapes_root / "JPEGImages" / f"{name}.jpg").save(target)
        written[relative] = target
    return written


# -- predict ---------------------------------------------------------------------------------------------
def test_predict_refuses_an_input_folder_as_output(run_dir, shapes_root, tmp_path, capsys):
    inputs = image_folder(
        tmp_path, shapes_root, {"pictures/a.png": "val_00000", "pictures/b.png": "val_00001"}
    )
    before = snapshot(tmp_path / "pictures")
    folder = str(tmp_path / "pictures")
    code, out, err = run_cli(
        capsys, "predict", "--checkpoint", run_dir / "checkpoints/last.pt", "--out", folder, folder
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "input images" in err and folder in err
    assert snapshot(tmp_path / "pictures") == before and len(inputs) == 2


def test_predict_refuses_two_inputs_with_one_output(run_dir, shapes_root, tmp_path, capsys):
    image_folder(
        tmp_path, shapes_root, {"a/img.jpg": "val_00000", "a/img.jpeg": "val_00001", "b/img.jpg": "val_00002"}
    )
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys,
        "predict",
        "--checkpoint",
        run_dir / "checkpoints/last.pt",
        "--out",
        out,
        tmp_path / "a",
        tmp_path / "b",
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "two predictions would be written to" in err and "img.jpeg" in err and "img.jpg" in err
    assert not out.exists() or not any(out.iterdir())


def test_predict_names_an_image_once_even_when_given_twice(run_dir, shapes_root, tmp_path, capsys):
    image_folder(tmp_path, shapes_root, {"in/x.jpg": "val_00000"})
    code, out, _ = run_cli(
        capsys,
        "predict",
        "--checkpoint",
        run_dir / "checkpoints/last.pt",
        "--out",
        tmp_path / "out",
        "--device",
        "cpu",
        tmp_path / "in",
        tmp_path / "in" / "x.jpg",
    )
    assert code == 0 and out.strip().splitlines() == [str(tmp_path / "out" / "x.png")]


@pytest.mark.parametrize("budget", [0, 400, 2500])
def test_predict_on_a_full_disk_leaves_complete_files_only(
    run_dir, shapes_root, tmp_path, capsys, monkeypatch, budget
):
    image_folder(tmp_path, shapes_root, {f"in/{i}.jpg": f"val_{i:05d}" for i in range(3)})
    FullDisk(monkeypatch, budget)
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "predict", "--checkpoint", run_dir / "checkpoints/last.pt", "--out", out, tmp_path / "in"
    )
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "No space left on device" in err and str(out) in err
    assert_complete_or_absent(out)


# -- eval --out --------------------------------------------------------------------------------------------
def test_eval_out_never_replaces_the_checkpoint(run_dir, capsys):
    checkpoint = run_dir / "checkpoints/best.pt"
    before = checkpoint.read_bytes()
    code, _, err = run_cli(capsys, "eval", run_dir, "--out", checkpoint, "--no-progress")
    assert code == 2 and "it is an input of this command" in err and len(err.strip().splitlines()) == 1
    assert checkpoint.read_bytes() == before


def test_eval_out_on_a_full_disk_writes_nothing(run_dir, tmp_path, capsys, monkeypatch):
    FullDisk(monkeypatch, budget=100)
    target = tmp_path / "eval.json"
    code, _, err = run_cli(capsys, "eval", run_dir, "--out", target, "--no-progress")
    assert code == 1 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert_complete_or_absent(tmp_path)


# -- pseudo-label ------------------------------------------------------------------------------------------
def test_pseudo_label_never_overwrites_the_ground_truth(shapes_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_root, data)
    cams = tmp_path / "cams"
    generator = np.random.default_rng(0)
    for name in ("train_00000", "train_00001"):
        save_cam(cams / f"{name}.npz", generator.random((len(SHAPES_CLASS_NAMES) - 1, 64, 64)), np.ones(10))
    truth = data / "SegmentationClass"
    before = snapshot(truth)
    code, _, err = run_cli(
        capsys, "pseudo-label", cams, "--threshold", "0.3", "--data", data, "--out", truth, "--no-progress"
    )
    assert code == 2 and "it is an input of this command" in err and "train_00000.png" in err
    assert snapshot(truth) == before


# -- visualize ---------------------------------------------------------------------------------------------
def test_visualize_never_replaces_an_input(run_dir, tmp_path, capsys):
    out = tmp_path / "pictures"
    code, _, _ = run_cli(capsys, "eval", run_dir, "--out", out / "per_class_iou.png", "--no-progress")
    assert code == 0
    before = (out / "per_class_iou.png").read_bytes()
    code, _, err = run_cli(
        capsys, "visualize", "curves", run_dir, "--eval-json", out / "per_class_iou.png", "--out", out
    )
    assert code == 2 and "it is an input of this command" in err
    assert (out / "per_class_iou.png").read_bytes() == before


@pytest.mark.parametrize("budget", [0, 5000])
def test_visualize_on_a_full_disk_leaves_no_partial_picture(run_dir, tmp_path, capsys, monkeypatch, budget):
    FullDisk(monkeypatch, budget)
    out = tmp_path / "viz"
    code, _, err = run_cli(capsys, "visualize", "predictions", run_dir, "--images", "2", "--out", out)
    assert code == 1 and "No space left on device" in err
    assert_complete_or_absent(out)


# -- make-data ---------------------------------------------------------------------------------------------
def test_make_data_refuses_a_folder_with_other_files(tmp_path, capsys):
    folder = tmp_path / "voc"
    (folder / "ImageSets" / "Segmentation").mkdir(parents=True)
    (folder / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n")
    code, _, err = run_cli(
        capsys, "make-data", "shapes", "--out", folder, "--num-train", "2", "--num-val", "1"
    )
    assert code == 2 and "not empty" in err and str(folder) in err
    assert (folder / "ImageSets" / "Segmentation" / "train.txt").read_text() == "2007_000032\n"
    assert [p.name for p in folder.iterdir()] == ["ImageSets"]


def test_make_data_writes_again_only_with_overwrite_and_prints_a_summary(tmp_path, capsys):
    folder = tmp_path / "shapes"
    arguments = ("make-data", "shapes", "--out", folder, "--size", "32", "--num-train", "3", "--num-val", "2")
    code, out, _ = run_cli(capsys, *arguments)
    assert code == 0 and len(out.strip().splitlines()) == 1
    assert "3 training and 2 validation images" in out and str(folder) in out
    code, _, err = run_cli(capsys, *arguments)
    assert code == 2 and "--overwrite" in err
    code, out, _ = run_cli(capsys, *arguments, "--overwrite", "--json")
    assert code == 0 and json.loads(out)["num_train"] == 3
    (folder / "shapes_meta.json").unlink()  # as if interrupted: the folder is still make-data's
    assert run_cli(capsys, *arguments, "--overwrite")[0] == 0


@pytest.mark.parametrize("budget", [0, 3000, 9000])
def test_make_data_on_a_full_disk_leaves_complete_files_only(tmp_path, capsys, monkeypatch, budget):
    FullDisk(monkeypatch, budget)
    folder = tmp_path / "shapes"
    code, _, err = run_cli(
        capsys, "make-data", "shapes", "--out", folder, "--size", "32", "--num-train", "4", "--num-val", "2"
    )
    assert code == 1 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert_complete_or_absent(folder)


# -- the pieces ----------------------------------------------------------------------------------------------
def test_output_plan_refuses_inputs_and_collisions(tmp_path):
    plan = OutputPlan([tmp_path / "in" / "a.png"], what="mask")
    plan.claim(tmp_path / "out" / "a.png", source="a.jpg")
    with pytest.raises(ValueError, match="two masks would be written to .*a.jpg and a.jpeg"):
        plan.claim(tmp_path / "out" / "a.png", source="a.jpeg")
    with pytest.raises(ValueError, match="it is an input of this command"):
        plan.claim(tmp_path / "in" / ".." / "in" / "a.png")


def test_atomic_write_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    atomic_write_text(path, '{"a": 1}')
    FullDisk(monkeypatch, budget=3)
    with pytest.raises(OSError, match=r"cannot write .*x.json: No space left on device"):
        atomic_write_text(path, '{"a": 2, "b": 3}')
    assert path.read_text() == '{"a": 1}' and [p.name for p in tmp_path.iterdir()] == ["x.json"]
