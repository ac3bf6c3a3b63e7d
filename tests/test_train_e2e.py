"""End-to-end: generate the benchmark, train, resume, evaluate, predict, DDP with 2 gloo processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.cli import main
from protoseg.config import load_config
from protoseg.data.shapes import generate_shapes
from protoseg.engine.trainer import Trainer
from tiny_runs import set_args

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, size=64, num_train=16, num_val=6, seed=3)
    return root


def tiny_overrides(root, **extra):
    values = {
        "data.root": str(root),
        "data.crop_size": "[48, 48]",
        "data.num_workers": 0,
        "data.mean": "[0.5, 0.5, 0.5]",
        "data.std": "[0.5, 0.5, 0.5]",
        "model.backbone.name": "tiny",
        "model.backbone.pretrained": "false",
        "model.decoder.channels": 16,
        "train.iterations": 6,
        "train.batch_size": 4,
        "train.lr": 0.05,
        "train.log_interval": 2,
        "train.val_interval": 3,
        "train.checkpoint_interval": 3,
        "train.device": "cpu",
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def test_train_eval_predict_cli(shapes_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(ROOT / "configs/shapes/linear.yaml"),
                "--run-dir",
                str(run_dir),
                "--no-progress",
                *set_args(tiny_overrides(shapes_root)),
            ]
        )
        == 0
    )
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert (run_dir / "config.yaml").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["split"] == "val"] == [3, 6]
    assert all(np.isfinite(r["loss"]) for r in records if r["split"] == "train")
    capsys.readouterr()

    # the same run folder again without --resume/--overwrite is refused, naming the folder
    assert (
        main(
            [
                "train",
                str(ROOT / "configs/shapes/linear.yaml"),
                "--run-dir",
                str(run_dir),
                *set_args(tiny_overrides(shapes_root)),
            ]
        )
        == 2
    )
    assert str(run_dir) in capsys.readouterr().err

    assert main(["eval", str(run_dir), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"mIoU", "aAcc", "mAcc", "per_class"} <= set(metrics)
    assert len(metrics["per_class"]) == 11

    names = (shapes_root / "ImageSets/Segmentation/val.txt").read_text().split()[:2]
    images = [str(shapes_root / "JPEGImages" / f"{name}.jpg") for name in names]
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run_dir / "checkpoints/last.pt"),
                "--out",
                str(out),
                "--device",
                "cpu",
                *images,
            ]
        )
        == 0
    )
    for name in names:
        mask = Image.open(out / f"{name}.png")
        assert mask.mode == "P" and mask.size == (64, 64)
        assert np.asarray(mask).max() < 11
        assert (out / f"{name}_overlay.jpg").is_file()


RESUMED = {
    "linear": {},
    # dropout (global RNG), anchor sampling (the method's own generator), contrast from iteration 1
    "contrast": {
        "model.method": "contrast",
        "model.contrast.start_iter": 1,
        "model.contrast.max_views": 8,
        "model.contrast.proj_dim": 8,
    },
    # the Gumbel draws of the prototype update (global RNG)
    "protoseg": {"model.method": "protoseg", "model.protoseg.assignment": "gumbel"},
}


@pytest.mark.parametrize("method", list(RESUMED))
@pytest.mark.parametrize("until", [3, 4])
def test_resume_gives_the_same_weights(shapes_root, tmp_path, method, until):
    """Interrupted right after a validation (3) or between validations (4), then resumed: the weights
    and the logged losses are those of an uninterrupted run."""
    overrides = tiny_overrides(shapes_root, **{"data.flip": "true", **RESUMED[method]})
    cfg = load_config(ROOT / "configs/shapes/linear.yaml", overrides)
    straight = Trainer(cfg, tmp_path / "straight", progress=False)
    straight.train()
    interrupted = Trainer(cfg, tmp_path / "resumed", progress=False)
    interrupted.train(until=until)
    resumed = Trainer(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert resumed.iteration == until
    resumed.train()
    expected, got = straight.method.state_dict(), resumed.method.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key

    def losses(run: str) -> dict:
        """Losses averaged over log windows (2 iterations) that lie wholly after the interruption."""
        records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return {
            r["iteration"]: r["loss"]
            for r in records
            if r["split"] == "train" and r["iteration"] - 2 >= until
        }

    assert losses("straight") == losses("resumed")


def test_protoseg_head_trains_and_keeps_prototypes_in_checkpoint(shapes_root, tmp_path):
    cfg = load_config(
        ROOT / "configs/shapes/linear.yaml",
        tiny_overrides(shapes_root, **{"model.method": "protoseg", "model.protoseg.num_prototypes": 3}),
    )
    trainer = Trainer(cfg, tmp_path / "proto", progress=False)
    before = trainer.method.network.head.bank.prototypes.clone()
    trainer.train()
    after = trainer.method.network.head.bank.prototypes
    assert not torch.equal(before, after)
    state = torch.load(tmp_path / "proto/checkpoints/last.pt", weights_only=True)
    assert torch.equal(state["model"]["network.head.bank.prototypes"], after)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(after) not in optimised


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_gloo_processes(shapes_root, tmp_path):
    run_dir = tmp_path / "ddp"
    overrides = tiny_overrides(
        shapes_root, **{"train.batch_size": 2, "model.method": "protoseg", "model.protoseg.num_prototypes": 2}
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "protoseg",
        "train",
        str(ROOT / "configs/shapes/linear.yaml"),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert state["iteration"] == 6
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "val" for r in records)


def test_wsss_pipeline_cli(shapes_root, tmp_path, capsys):
    """Stage 1 from tags -> CAMs -> seed sweep -> pseudo labels -> stage 2 on the pseudo masks."""
    stage1 = tmp_path / "cam_run"
    sets = set_args(tiny_overrides(shapes_root, **{"train.val_interval": 6}))
    assert (
        main(
            [
                "train",
                str(ROOT / "configs/shapes/wsss_cam.yaml"),
                "--run-dir",
                str(stage1),
                "--no-progress",
                *sets,
            ]
        )
        == 0
    )
    cams = tmp_path / "cams"
    assert (
        main(
            [
                "cam",
                str(stage1),
                "--split",
                "train",
                "--out",
                str(cams),
                "--scales",
                "1.0",
                "1.5",
                "--no-progress",
            ]
        )
        == 0
    )
    names = (shapes_root / "ImageSets/Segmentation/train.txt").read_text().split()
    assert sorted(p.stem for p in cams.glob("*.npz")) == sorted(names)
    # resumable: a second run writes nothing new
    capsys.readouterr()
    assert (
        main(["cam", str(stage1), "--split", "train", "--out", str(cams), "--scales", "1.0", "--no-progress"])
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == len(names)

    assert (
        main(["seeds-eval", str(cams), "--data", str(shapes_root), "--thresholds", "0.1:0.3:0.1", "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["thresholds"] == [0.1, 0.2, 0.3]
    assert result["best_threshold"] in result["thresholds"]
    assert max(result["miou"]) == result["best_metrics"]["mIoU"]
    assert (cams / "seed_curve.png").is_file()

    pseudo = tmp_path / "pseudo"
    assert (
        main(
            [
                "pseudo-label",
                str(cams),
                "--threshold",
                str(result["best_threshold"]),
                "--out",
                str(pseudo),
                "--data",
                str(shapes_root),
                "--no-progress",
            ]
        )
        == 0
    )
    masks = sorted(pseudo.glob("*.png"))
    assert [p.stem for p in masks] == sorted(names)
    values = np.unique(np.concatenate([np.unique(np.asarray(Image.open(p))) for p in masks]))
    assert set(values.tolist()) <= set(range(11)) | {255}

    stage2 = tmp_path / "stage2"
    assert (
        main(
            [
                "train",
                str(ROOT / "configs/shapes/wsss_stage2.yaml"),
                "--run-dir",
                str(stage2),
                "--no-progress",
                *sum(
                    [
                        ["--set", item]
                        for item in tiny_overrides(shapes_root, **{"data.label_dir": str(pseudo)})
                    ],
                    [],
                ),
            ]
        )
        == 0
    )
    assert (stage2 / "checkpoints/last.pt").is_file()
