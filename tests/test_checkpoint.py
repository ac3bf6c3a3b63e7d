import random

import numpy as np
import pytest
import torch

from protoseg.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from protoseg.engine.optim import poly_lr_factor


def test_atomic_save_and_load(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint({"model": {"w": torch.arange(3)}, "iteration": 5}, path)
    state = load_checkpoint(path)
    assert state["iteration"] == 5 and torch.equal(state["model"]["w"], torch.arange(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"model": {"w": Unpicklable()}}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_corrupt_checkpoint_is_named(tmp_path):
    path = tmp_path / "broken.pt"
    save_checkpoint({"model": {"w": torch.randn(100)}}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="broken.pt"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_rng_state_round_trip(tmp_path):
    state = rng_state()
    save_checkpoint({"model": {}, "rng": state}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])


def test_poly_schedule():
    assert poly_lr_factor(0, 100) == 1.0
    assert poly_lr_factor(100, 100) == 0.0
    assert abs(poly_lr_factor(50, 100, power=0.9) - 0.5**0.9) < 1e-12
    assert abs(poly_lr_factor(0, 100, lr_warmup_iters=10) - 0.1) < 1e-12
    assert abs(poly_lr_factor(5, 100, lr_warmup_iters=10) - 0.55) < 1e-12
