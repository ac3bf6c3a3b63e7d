"""Ctrl-C (SIGINT to the whole process group, as a terminal sends it) and SIGTERM stop training after the
current iteration: last.pt is saved at that iteration, one line says so, and --resume continues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from protoseg.config import load_config
from protoseg.data.shapes import generate_shapes
from protoseg.engine.checkpoint import load_checkpoint
from protoseg.engine.trainer import Trainer
from tiny_runs import CONFIG, PYTHON, subprocess_env, tiny_overrides, train_args

LONG = {
    "train.iterations": 100000,
    "train.log_interval": 1,
    "train.val_interval": 0,
    "train.checkpoint_interval": 0,
}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, size=64, num_train=8, num_val=2, seed=3)
    return root


def interrupt(shapes_root, run_dir, signal_number: int, **extra) -> subprocess.CompletedProcess:
    """Start a long training run in its own process group, wait for its first log lines, then send
    ``signal_number`` to the whole group; returns the finished process (stdout, stderr, status)."""
    process = subprocess.Popen(
        [PYTHON, "-m", "protoseg", *train_args(shapes_root, run_dir, **{**LONG, **extra})],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        lines = 0
        while lines < 2 and time.monotonic() < deadline:
            if process.stdout.readline().startswith("["):
                lines += 1
        assert lines == 2, "training did not start"
        os.killpg(process.pid, signal_number)
        out, err = process.communicate(timeout=120)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize(("signal_number", "workers"), [(signal.SIGINT, 1), (signal.SIGTERM, 0)])
def test_a_signal_saves_and_says_how_to_resume(shapes_root, tmp_path, signal_number, workers):
    run_dir = tmp_path / "run"
    result = interrupt(shapes_root, run_dir, signal_number, **{"data.num_workers": workers})
    assert result.returncode == 128 + signal_number, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    iteration = state["iteration"]
    assert lines[0] == (
        f"protoseg train: interrupted at iteration {iteration}; saved {run_dir / 'checkpoints' / 'last.pt'}; "
        "continue with --resume"
    )
    logged = [json.loads(line)["iteration"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1] == iteration  # every logged iteration is in the checkpoint (log interval 1)
    cfg = load_config(CONFIG, tiny_overrides(shapes_root, **{**LONG, "data.num_workers": workers}))
    resumed = Trainer(cfg, run_dir, resume=True, progress=False)
    assert resumed.iteration == iteration
    resumed.train(until=iteration + 1)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == iteration + 1
