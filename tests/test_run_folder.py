"""The run folder of a training run: one trainer at a time, honest resumes (the config, the log, stale
temporary files), --overwrite, readable checkpoints, plain log lines."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import pytest
import torch

from protoseg.config import load_config
from protoseg.data.shapes import generate_shapes
from protoseg.engine.run_folder import RunFolder, RunFolderBusy
from protoseg.engine.trainer import Trainer
from tiny_runs import CONFIG, PYTHON, run_cli, subprocess_env, tiny_overrides, train_args


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, size=64, num_train=8, num_val=4, seed=3)
    return root


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- one trainer per folder -----------------------------------------------------------------------------
def test_a_second_trainer_on_a_running_folder_is_refused(shapes_root, tmp_path, capsys):
    """A trainer in another process holds the folder: a second one fails at once, naming the folder and
    the process, and writes nothing into it."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            PYTHON,
            "-c",
            "import sys, time; from protoseg.engine.run_folder import RunFolder; "
            "folder = RunFolder(sys.argv[1]); folder.prepare(False, False); print('locked', flush=True); "
            "time.sleep(60)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli(capsys, *train_args(shapes_root, run_dir))
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"run folder {run_dir} is in use by another protoseg train (process {holder.pid})" in err
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    # the lock goes with its process, also after kill -9
    assert run_cli(capsys, *train_args(shapes_root, run_dir))[0] == 0


def test_the_lock_is_released_after_training_and_a_failed_start_leaves_no_folder(shapes_root, tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.prepare(resume=False, overwrite=False)
    with pytest.raises(RunFolderBusy):
        RunFolder(tmp_path / "run").prepare(resume=False, overwrite=False)
    folder.unlock(failed=True)
    assert not (tmp_path / "run").exists()  # created by the failed start, holding nothing: removed


# -- resume --------------------------------------------------------------------------------------------------
def test_resume_refuses_a_changed_config_and_names_the_keys(shapes_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_cli(capsys, *train_args(shapes_root, run_dir, **{"train.iterations": 3}))[0] == 0
    config_before = (run_dir / "config.yaml").read_text()
    code, _, err = run_cli(capsys, *train_args(shapes_root, run_dir, "--resume", **{"train.lr": 0.5}))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train.lr 0.05 -> 0.5" in err and "--change-config" in err
    assert (run_dir / "config.yaml").read_text() == config_before  # nothing recorded that was not used
    # keys that change no result may differ
    free = {"train.iterations": 3, "train.log_interval": 1, "data.num_workers": 1}
    assert run_cli(capsys, *train_args(shapes_root, run_dir, "--resume", **free))[0] == 0


def test_resume_with_change_config_trains_on_the_new_values(shapes_root, tmp_path, capsys):
    """--change-config: the new learning rate is the one the optimiser uses from the resumed iteration
    on, the config records it, and the previous config is kept."""
    run_dir = tmp_path / "run"
    base = {"train.iterations": 6, "train.checkpoint_interval": 3, "train.val_interval": 0}
    cfg = load_config(CONFIG, tiny_overrides(shapes_root, **base))
    first = Trainer(cfg, run_dir, progress=False)
    first.train(until=3)
    changed = load_config(
        CONFIG, tiny_overrides(shapes_root, **{**base, "train.lr": 0.5, "train.momentum": 0.5})
    )
    with pytest.raises(ValueError, match="train.lr 0.05 -> 0.5"):
        Trainer(changed, run_dir, resume=True, progress=False)
    resumed = Trainer(changed, run_dir, resume=True, progress=False, change_config=True)
    fresh = Trainer(changed, tmp_path / "fresh", progress=False)  # the schedule of the new config
    factor = fresh.step.scheduler.lr_lambdas[0](3)
    for group, expected in zip(resumed.optimizer.param_groups, fresh.optimizer.param_groups):
        assert group["lr"] == pytest.approx(expected["initial_lr"] * factor) and group["momentum"] == 0.5
    assert "lr: 0.5" in (run_dir / "config.yaml").read_text()
    assert "lr: 0.05" in (run_dir / "config.until_3.yaml").read_text()
    resumed.train()
    lrs = [r["lr"] for r in records(run_dir) if r["split"] == "train" and r["iteration"] > 3]
    assert lrs and all(lr > 0.05 for lr in lrs)


def test_resume_names_both_models_when_the_weights_do_not_fit(shapes_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert (
        run_cli(
            capsys,
            *train_args(
                shapes_root,
                run_dir,
                **{"train.iterations": 2, "model.method": "protoseg", "train.val_interval": 2},
            ),
        )[0]
        == 0
    )
    code, _, err = run_cli(capsys, *train_args(shapes_root, run_dir, "--resume", **{"train.iterations": 2}))
    assert code == 2 and "model.method 'protoseg' -> 'linear'" in err
    code, _, err = run_cli(
        capsys, *train_args(shapes_root, run_dir, "--resume", "--change-config", **{"train.iterations": 2})
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "holds a model.method=protoseg (backbone tiny) model" in err
    assert "the config builds a model.method=linear (backbone tiny) model" in err


def test_resume_cuts_the_log_back_to_the_checkpoint_and_removes_stale_temporaries(shapes_root, tmp_path):
    """After kill -9 between a log line and the next checkpoint, the resumed run logs each iteration once,
    and the hidden temporary file of an interrupted checkpoint write is gone."""
    run_dir = tmp_path / "run"
    cfg = load_config(CONFIG, tiny_overrides(shapes_root, **{"train.log_interval": 1}))
    Trainer(cfg, run_dir, progress=False).train(until=3)
    with open(run_dir / "metrics.jsonl", "a") as log:  # what a process killed at iteration 4 left
        log.write(json.dumps({"split": "train", "iteration": 4, "loss": 123.0, "lr": 0.1}) + "\n")
        log.write('{"split": "train", "itera')
    stale = run_dir / "checkpoints" / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    resumed = Trainer(cfg, run_dir, resume=True, progress=False)
    assert not stale.exists()
    resumed.train()
    train_iterations = [r["iteration"] for r in records(run_dir) if r["split"] == "train"]
    assert train_iterations == [1, 2, 3, 4, 5, 6]
    assert all(r.get("loss") != 123.0 for r in records(run_dir))


def test_resume_makes_up_a_validation_the_killed_run_did_not_finish(shapes_root, tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(CONFIG, tiny_overrides(shapes_root))
    Trainer(cfg, run_dir, progress=False).train(until=3)
    kept = [r for r in records(run_dir) if not (r["split"] == "val" and r["iteration"] == 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))  # killed in the val
    Trainer(cfg, run_dir, resume=True, progress=False).train()
    assert [r["iteration"] for r in records(run_dir) if r["split"] == "val"] == [3, 6]


# -- what was already there, now tested -------------------------------------------------------------------
def test_overwrite_clears_checkpoints_log_tensorboard_and_pictures(shapes_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_cli(capsys, *train_args(shapes_root, run_dir, **{"train.iterations": 2}))[0] == 0
    (run_dir / "tb").mkdir(exist_ok=True)
    (run_dir / "tb" / "events.old").write_text("old")
    (run_dir / "viz").mkdir()
    (run_dir / "viz" / "old.png").write_text("old")
    assert (
        run_cli(capsys, *train_args(shapes_root, run_dir, "--overwrite", **{"train.iterations": 2}))[0] == 0
    )
    assert not (run_dir / "tb" / "events.old").exists() and not (run_dir / "viz").exists()
    assert [r["iteration"] for r in records(run_dir) if r["split"] == "train"] == [2]


def test_checkpoints_are_readable_like_the_other_outputs(shapes_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    old_mask = os.umask(0o022)
    try:
        assert run_cli(capsys, *train_args(shapes_root, run_dir, **{"train.iterations": 2}))[0] == 0
    finally:
        os.umask(old_mask)
    for name in ("last.pt", "best.pt"):
        assert stat.S_IMODE((run_dir / "checkpoints" / name).stat().st_mode) == 0o644
    assert stat.S_IMODE((run_dir / "config.yaml").stat().st_mode) == 0o644
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 2


def test_plain_log_lines_when_not_on_a_terminal(shapes_root, tmp_path):
    """Without a terminal (here: a pipe) the log is plain lines: iteration, losses, lr, it/s, val metrics;
    no carriage-return progress bars, also without --no-progress."""
    run_dir = tmp_path / "run"
    arguments = [a for a in train_args(shapes_root, run_dir) if a != "--no-progress"]
    start = time.perf_counter()
    result = subprocess.run(
        [PYTHON, "-m", "protoseg", *arguments],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stdout and "\r" not in result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("[2/6] train loss ") and " lr " in line and "it/s" in line for line in lines)
    assert any(line.startswith("[3] val mIoU ") and "aAcc" in line for line in lines)
    assert time.perf_counter() - start < 300
