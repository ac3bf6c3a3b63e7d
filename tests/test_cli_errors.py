"""Every command ends an error in one line ``protoseg CMD: error: ...`` naming the file / key / value,
refuses invalid values when it reads them, and speaks plainly: warnings in one line, help on every
option, --no-progress everywhere, which checkpoint eval evaluated, targets not judged at toy sizes."""

from __future__ import annotations

import argparse
import errno
import os

import numpy as np
import pytest
import torch

from protoseg.benchmark.tables import targets_table
from protoseg.benchmark.targets import evaluate_targets
from protoseg.cli import build_parser
from protoseg.config import load_config
from protoseg.data.palette import IGNORE_COLOUR
from protoseg.data.shapes import SHAPES_CLASS_NAMES, SHAPES_PALETTE, generate_shapes
from protoseg.data.voc import VOCDataset
from protoseg.engine.trainer import Trainer
from protoseg.wsss.cam_inference import save_cam
from protoseg.wsss.seeds import sweep_edge_warning
from tiny_runs import CONFIG, FullDisk, run_cli, set_args, tiny_overrides, train_args

COMMANDS = (
    "make-data",
    "train",
    "eval",
    "predict",
    "cam",
    "seeds-eval",
    "pseudo-label",
    "visualize",
    "benchmark",
)


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


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- invalid values fail when they are read ------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("eval.scales=[]", "config key 'eval.scales' needs at least 1 value(s), got 0"),
        ("eval.scales=[-1.0]", "config key 'eval.scales' item 0: must be > 0.0, got -1.0"),
        ("train.iterations=0", "config key 'train.iterations' must be >= 1, got 0"),
        ("train.iterations=-5", "config key 'train.iterations' must be >= 1, got -5"),
        ("train.log_interval=0", "config key 'train.log_interval' must be >= 1, got 0"),
        ("train.device=tpu", "config key 'train.device' must match auto|cpu|cuda(:\\d+)?, got 'tpu'"),
    ],
)
def test_invalid_config_values_fail_before_anything_runs(shapes_root, tmp_path, capsys, override, expected):
    code, _, err = run_cli(capsys, *train_args(shapes_root, tmp_path / "run"), "--set", override)
    assert code == 2
    assert one_line(err) == f"protoseg train: error: {expected} (from the override '{override}')"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["pseudo-label", "cams", "--out", "x", "--threshold", "1.5"], "must be in [0.0, 1.0), got 1.5"),
        (["pseudo-label", "cams", "--out", "x", "--threshold", "-0.5"], "must be in [0.0, 1.0), got -0.5"),
        (
            ["pseudo-label", "cams", "--out", "x", "--threshold", "0.2", "--ignore-band", "0.1", "2"],
            "got 2.0",
        ),
        (["cam", "run", "--out", "x", "--scales", "1.0", "-1"], "argument --scales: must be > 0.0, got -1.0"),
        (["make-data", "shapes", "--out", "x", "--size", "10"], "argument --size: must be >= 32, got 10"),
        (
            ["make-data", "shapes", "--out", "x", "--num-val", "-1"],
            "argument --num-val: must be >= 0, got -1",
        ),
        (["visualize", "predictions", "run", "--images", "0"], "argument --images: must be >= 1, got 0"),
        (["benchmark", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
    ],
)
def test_invalid_command_line_values_are_refused(capsys, argv, expected):
    with pytest.raises(SystemExit) as stop:
        code = run_cli(capsys, *argv)[0]
        raise SystemExit(code)
    assert stop.value.code == 2
    assert expected in capsys.readouterr().err


def test_predict_device_error_is_one_line(run_dir, tmp_path, capsys):
    code, _, err = run_cli(
        capsys,
        "predict",
        "x.jpg",
        "--checkpoint",
        run_dir / "checkpoints/last.pt",
        "--out",
        tmp_path,
        "--device",
        "gpu",
    )
    assert (
        code == 2
        and one_line(err) == "protoseg predict: error: unknown device 'gpu' (valid: auto, cpu, cuda, cuda:N)"
    )


# -- one line for every error ----------------------------------------------------------------------------
def test_a_text_file_given_as_checkpoint(tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("these are my notes\n")
    for argv in (
        ["predict", tmp_path, "--checkpoint", text, "--out", tmp_path / "out"],
        ["eval", CONFIG, "--checkpoint", text],
    ):
        code, _, err = run_cli(capsys, *argv)
        line = one_line(err)
        assert code == 2 and f"checkpoint {text} is not a PyTorch checkpoint file" in line
        assert "weights_only" not in line


def test_a_checkpoint_with_foreign_objects_is_not_unpickled(tmp_path, capsys):
    path = tmp_path / "foreign.pt"
    torch.save({"model": argparse.Namespace(a=1)}, path)
    code, _, err = run_cli(capsys, "eval", CONFIG, "--checkpoint", path)
    line = one_line(err)
    assert code == 2 and "holds objects that protoseg checkpoints never contain" in line
    assert "weights_only" not in line


def test_seeds_eval_on_cams_of_another_split(shapes_root, tmp_path, capsys):
    cams = tmp_path / "cams"
    for name in ("train_00000", "train_00001"):
        save_cam(cams / f"{name}.npz", np.random.default_rng(0).random((10, 64, 64)), np.ones(10))
    code, _, err = run_cli(capsys, "seeds-eval", cams, "--data", shapes_root, "--split", "val")
    line = one_line(err)
    assert code == 2 and "2 of the 2 CAM files" in line and "the 'val' split" in line and "--split" in line
    # on the right split: the sweep warns (one line) when its best threshold is at the sweep's edge
    code, _, err = run_cli(capsys, "seeds-eval", cams, "--data", shapes_root, "--thresholds", "0.1,0.2")
    assert code == 0 and "protoseg seeds-eval: warning: the best background threshold" in one_line(err)


def test_read_only_output_folder(run_dir, tmp_path, capsys, monkeypatch):
    import protoseg.files as files

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    code, _, err = run_cli(capsys, "eval", run_dir, "--out", tmp_path / "m.json", "--no-progress")
    assert code == 1
    assert one_line(err) == f"protoseg eval: error: cannot write {tmp_path / 'm.json'}: Read-only file system"


def test_an_output_path_under_a_file(run_dir, shapes_root, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    image = shapes_root / "JPEGImages" / "val_00000.jpg"
    code, _, err = run_cli(
        capsys, "predict", "--checkpoint", run_dir / "checkpoints/last.pt", "--out", blocker / "out", image
    )
    assert code in (1, 2) and str(blocker) in one_line(err)


def test_a_full_disk_during_a_checkpoint(shapes_root, tmp_path, capsys, monkeypatch):
    FullDisk(monkeypatch, budget=6000)  # the config and log lines fit, a checkpoint does not
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, *train_args(shapes_root, run))
    line = one_line(err)
    assert code == 1 and f"cannot write {run / 'checkpoints' / 'last.pt'}: No space left on device" in line
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_an_unexpected_error_is_one_line_unless_debugging(run_dir, capsys, monkeypatch):
    import protoseg.engine.evaluator as evaluator

    def broken(*args, **kwargs):
        raise RuntimeError("something broke\nwith details on a second line")

    monkeypatch.setattr(evaluator, "evaluate", broken)
    code, _, err = run_cli(capsys, "eval", run_dir, "--no-progress")
    assert code == 1
    assert one_line(err) == (
        "protoseg eval: error: RuntimeError: something broke (an unexpected error; set PROTOSEG_DEBUG=1 "
        "to see the traceback)"
    )
    monkeypatch.setenv("PROTOSEG_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something broke"):
        run_cli(capsys, "eval", run_dir, "--no-progress")


# -- speaking plainly ----------------------------------------------------------------------------------------
def test_eval_says_which_checkpoint_it_evaluated(run_dir, capsys):
    code, out, _ = run_cli(capsys, "eval", run_dir, "--no-progress")
    assert code == 0
    assert out.splitlines()[0] == (
        f"evaluating {run_dir / 'checkpoints' / 'best.pt'} (iteration 2) on split 'val' (4 images)"
    )


def test_a_folder_dataset_without_splits_warns_in_one_line(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    generator = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(generator.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
            root / "images" / f"{index}.png"
        )
        Image.fromarray(generator.integers(0, 3, (48, 48), dtype=np.uint8)).save(
            root / "masks" / f"{index}.png"
        )
    overrides = tiny_overrides(root, **{"data.name": "folder", "data.num_classes": 3, "train.iterations": 1})
    code, _, err = run_cli(
        capsys,
        "train",
        CONFIG,
        "--run-dir",
        tmp_path / "run",
        "--no-progress",
        *set_args(overrides),
    )
    assert code == 0
    assert one_line(err) == (
        "protoseg train: warning: validation split 'val' shares 4 of its 4 images with the training split "
        "'train' (a folder dataset without split files or folders): validation scores measure the fit to the "
        "training images, not generalisation"
    )


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every command of this issue and every ``visualize`` picture, by name."""
    top = _subparsers(build_parser())
    commands = {name: top[name] for name in COMMANDS}
    for name, parser in _subparsers(top["visualize"]).items():
        commands[f"visualize {name}"] = parser
    del commands["visualize"]
    return commands


def test_every_option_has_help_and_every_command_takes_no_progress():
    for name, parser in _commands().items():
        options = [action for action in parser._actions if not isinstance(action, argparse._HelpAction)]
        missing = [action.dest for action in options if not action.help]
        assert not missing, f"protoseg {name}: no help text for {missing}"
        assert any("--no-progress" in action.option_strings for action in options), name


def test_quick_benchmark_targets_are_not_judged():
    results = {
        "step": {"segmentation": {"methods": {"protoseg": {"ratio": 1.5}}}},
        "sync": {
            "segmentation": {
                "baseline": "linear",
                "methods": {
                    "linear": {"syncs": 1, "method_specific": 0},
                    "protoseg": {"syncs": 1, "method_specific": 0},
                },
            }
        },
    }
    full = targets_table(evaluate_targets(results, "cpu"))
    quick = targets_table(evaluate_targets(results, "cpu", quick=True))
    step_line = next(line for line in quick.splitlines() if "ProtoSeg step / linear" in line)
    assert "n/a at --quick toy sizes" in step_line and "FAIL" not in step_line
    assert "FAIL" in next(line for line in full.splitlines() if "ProtoSeg step / linear" in line)
    sync_line = next(line for line in quick.splitlines() if "protoseg (its own" in line)
    assert "PASS" in sync_line  # a count of host syncs does not depend on sizes


def test_sweep_edge_warning():
    def result(thresholds, best):
        return {"thresholds": thresholds, "best_threshold": best}

    assert "highest value of the sweep (0.1..0.3)" in sweep_edge_warning(result([0.1, 0.2, 0.3], 0.3))
    assert "lowest value" in sweep_edge_warning(result([0.1, 0.2, 0.3], 0.1))
    assert sweep_edge_warning(result([0.1, 0.2, 0.3], 0.2)) is None
    assert sweep_edge_warning(result([0.0, 0.2, 0.3], 0.0)) is None  # nothing lies below 0
    assert sweep_edge_warning(result([0.2], 0.2)) is None


def test_shapes_colours_stand_apart_from_the_background_and_each_other(shapes_root):
    colours = np.asarray(SHAPES_PALETTE, dtype=np.float64)
    assert colours.shape == (len(SHAPES_CLASS_NAMES), 3) and colours[0].tolist() == [0, 0, 0]
    luminance = colours[1:] @ np.array([0.299, 0.587, 0.114])
    assert luminance.min() > 60, luminance  # crescent was (64, 0, 0): luminance 19
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1) + np.eye(len(colours)) * 1e9
    assert distances.min() > 100
    assert np.linalg.norm(colours - np.asarray(IGNORE_COLOUR), axis=-1).min() > 40
    # the VOC loader takes the dataset's own colours from its palette masks (what the pictures use)
    assert VOCDataset(shapes_root, "train").palette == SHAPES_PALETTE
