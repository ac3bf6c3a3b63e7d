"""OAA as a method: the step's maps reach the store by epoch (start epoch, last-epoch writes), a resumed
run and a 2-process DDP run accumulate bit-identical maps to an uninterrupted single process, even when
the interrupted run wrote maps past its checkpoint, and the maps become CAM files for seeds-eval."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from protoseg.cli import main
from protoseg.config import load_config
from protoseg.data.shapes import generate_shapes
from protoseg.engine.trainer import Trainer
from protoseg.methods import DatasetInfo, RunInfo, build_method
from protoseg.prototypes.attention_store import map_path, read_maps, read_meta

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/shapes/wsss_cam.yaml"
TINY = ["model.backbone.name=tiny", "model.backbone.pretrained=false", "model.backbone.output_stride=8"]


def batch(indices, frame=(1.0, 0.0, 1.0, 0.0, 32.0, 32.0)):
    generator = torch.Generator().manual_seed(sum(indices))
    return {
        "image": torch.randn(len(indices), 3, 32, 32, generator=generator),
        "tags": torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])[: len(indices)],
        "index": torch.tensor(indices),
        "frame": torch.tensor([frame] * len(indices)),
    }


def build(*overrides):
    cfg = load_config(None, TINY + ["model.method=oaa", *overrides])
    torch.manual_seed(0)
    return build_method(cfg.model, DatasetInfo(5, True), 0)


def step(method, data, iteration):
    method.train()
    terms = method(data, iteration)
    terms["loss"].backward()
    method.after_step(iteration)
    method.refresh()
    return terms


def test_maps_are_accumulated_from_the_start_epoch_and_every_image_gets_one_in_the_last(tmp_path):
    method = build("model.oaa.start_epoch=1", "model.oaa.filter=probability", "model.oaa.min_probability=1.0")
    method.attach_run(RunInfo(tmp_path, iterations_per_epoch=2, iterations=6, sample_names=("a", "b", "c")))
    assert method.refresh_interval(2) == 1
    step(method, batch([0, 1]), 0)  # epoch 0: nothing
    assert not map_path(tmp_path / "oaa", 0).exists()
    step(method, batch([0, 1]), 2)  # epoch 1: the filter (probability >= 1) lets nothing through
    record = read_maps(map_path(tmp_path / "oaa", 0))
    assert record.iteration == 2 and len(record.classes) == 0
    step(method, batch([0, 2]), 4)  # epoch 2, the last: tagged classes without a map take the step's
    first, third = read_maps(map_path(tmp_path / "oaa", 0)), read_maps(map_path(tmp_path / "oaa", 2))
    assert first.classes.tolist() == [0, 2] and first.counts.tolist() == [1, 1] and first.iteration == 4
    assert third.classes.tolist() == [1]
    assert first.maps.shape == (2, 4, 4)  # the training CAM's size at output stride 8
    assert first.maps.amax(dim=(1, 2)).tolist() == [255, 255]  # each map is scaled to its maximum
    assert read_meta(tmp_path / "oaa")["names"] == ["a", "b", "c"]


def test_maps_live_in_the_original_image_and_other_ranks_write_nothing(tmp_path):
    method = build("model.oaa.start_epoch=0", "model.oaa.map_size=8")
    method.attach_run(RunInfo(tmp_path / "r0", 1, 10))
    cams = torch.rand(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    plain = batch([0])
    flipped = batch([0], frame=(1.0, 0.0, -1.0, 32.0, 32.0, 32.0))
    method.track(plain, cams)
    _, maps, tagged, passed = method._tracked
    # the flipped view's CAM, mapped back through its frame, lands where the plain view's does
    method.track(flipped, cams.flip(-1))
    assert torch.equal(method._tracked[1], maps)
    assert maps.shape == (1, 4, 8, 8) and tagged.tolist() == [[True, False, True, False]]
    # a view of the top-left quarter, twice enlarged, covers only that quarter
    zoomed = batch([0], frame=(0.5, 0.0, 0.5, 0.0, 32.0, 32.0))
    method.track(zoomed, cams)
    quarter = method._tracked[1][0]
    assert quarter[:, 4:].eq(0).all() and quarter[:, :, 4:].eq(0).all() and quarter[:, :4, :4].gt(0).any()
    silent = build("model.oaa.start_epoch=0")
    silent.attach_run(RunInfo(tmp_path / "r2", 1, 10, rank=1, world_size=1))
    step(silent, plain, 0)
    assert not list((tmp_path / "r2").glob("oaa/*.pt"))


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("oaa_shapes")
    generate_shapes(root, size=64, num_train=8, num_val=4, seed=5)
    return root


def overrides(root, **extra):
    values = {
        "data.root": root,
        "data.crop_size": "[48, 48]",
        "data.scale_range": "[0.7, 1.1]",
        "data.num_workers": 0,
        "model.method": "oaa",
        "model.backbone.name": "tiny",
        "model.backbone.pretrained": "false",
        "model.backbone.output_stride": 8,
        "model.oaa.freeze_bn": "true",
        "model.oaa.map_size": 6,
        "train.iterations": 8,  # 4 epochs of 2 iterations
        "train.batch_size": 4,
        "train.lr": 0.02,
        "train.log_interval": 2,
        "train.val_interval": 0,
        "train.checkpoint_interval": 3,
        "train.device": "cpu",
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]


def stored(run_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((run_dir / "oaa").iterdir())}


def maps_of(run_dir: Path) -> dict[int, tuple]:
    records = {}
    for path in sorted((run_dir / "oaa").glob("*.pt")):
        record = read_maps(path)
        records[int(path.stem)] = (
            record.classes.tolist(),
            record.counts.tolist(),
            record.maps,
            record.iteration,
        )
    return records


def assert_same_maps(expected: dict, got: dict) -> None:
    assert expected.keys() == got.keys()
    for index in expected:
        a, b = expected[index], got[index]
        assert a[:2] == b[:2] and a[3] == b[3] and torch.equal(a[2], b[2]), index


def test_a_resumed_run_accumulates_the_same_maps(shapes_root, tmp_path):
    cfg = load_config(CONFIG, overrides(shapes_root))
    straight = Trainer(cfg, tmp_path / "straight", progress=False)
    straight.train()
    expected = maps_of(tmp_path / "straight")
    assert len(expected) == 8 and all(record[1] for record in expected.values())

    interrupted = Trainer(cfg, tmp_path / "resumed", progress=False)
    interrupted.train(until=5)  # checkpoint at 5, maps written through 5
    resumed = Trainer(cfg, tmp_path / "resumed", resume=True, progress=False)
    resumed.train()
    assert_same_maps(expected, maps_of(tmp_path / "resumed"))

    # a run that wrote maps past its last checkpoint before it died (checkpoint at 3, maps through 8)
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "straight", crashed)
    first = Trainer(cfg, tmp_path / "early", progress=False)
    first.train(until=3)
    shutil.copy(tmp_path / "early/checkpoints/last.pt", crashed / "checkpoints/last.pt")
    again = Trainer(cfg, crashed, resume=True, progress=False)
    assert again.iteration == 3
    again.train()
    assert stored(crashed) == stored(tmp_path / "straight")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_ddp_processes_accumulate_what_one_process_does(shapes_root, tmp_path):
    """Two gloo ranks of batch 2 see, step by step, the single process's batch of 4 (the seeded sampler);
    with the weights held fixed (a learning rate far below float32 resolution, frozen BatchNorm) the maps
    each image gets are the same, and rank 0 writes every rank's."""
    frozen = {"train.lr": "1.0e-20", "train.lr_warmup_iters": 0}
    single = tmp_path / "single"
    Trainer(load_config(CONFIG, overrides(shapes_root, **frozen)), single, progress=False).train()
    ddp = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
        str(free_port()), "-m", "protoseg", "train", str(CONFIG), "--run-dir", str(ddp), "--no-progress",
    ]  # fmt: skip
    for item in overrides(shapes_root, **frozen, **{"train.batch_size": 2}):
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_maps(maps_of(single), maps_of(ddp))
    assert stored(single) == stored(ddp)


def test_the_maps_become_cam_files_for_seeds_eval(shapes_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    Trainer(load_config(CONFIG, overrides(shapes_root)), run_dir, progress=False).train()
    cams = tmp_path / "cams"
    script = ROOT / "benchmarks/oaa_cams.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), str(run_dir), "--out", str(cams), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["written"] == summary["images"] == 8
    from protoseg.wsss.cam_inference import load_cam

    record = load_cam(cams / f"{read_meta(run_dir / 'oaa')['names'][0]}.npz")
    assert record.size == (64, 64) and record.cams.max() <= 1.0
    capsys.readouterr()
    code = main(["seeds-eval", str(cams), "--data", str(shapes_root), "--split", "train", "--json"])
    assert code == 0
    assert 0 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["best_metrics"]["mIoU"] <= 100
