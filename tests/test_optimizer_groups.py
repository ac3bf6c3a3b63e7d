"""The optimiser's parameter groups: the backbone's learning-rate multiplier reaches the backbone."""

from __future__ import annotations

import pytest

from protoseg.config import load_config
from protoseg.data.shapes import generate_shapes
from protoseg.engine.trainer import Trainer
from tiny_runs import CONFIG, tiny_overrides


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, size=64, num_train=8, num_val=2, seed=3)
    return root


def test_backbone_lr_mult_reaches_the_backbone(shapes_root, tmp_path):
    """train.backbone_lr_mult was silently ignored for methods (the optimiser looked for model.backbone,
    a method has model.network.backbone)."""
    cfg = load_config(CONFIG, tiny_overrides(shapes_root, **{"train.backbone_lr_mult": 0.1}))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    backbone = {id(p) for p in trainer.method.network.backbone.parameters()}
    groups = trainer.optimizer.param_groups
    assert len(groups) == 2 and {id(p) for p in groups[1]["params"]} == backbone
    assert groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"])
    trainer.run.unlock()
    plain = Trainer(load_config(CONFIG, tiny_overrides(shapes_root)), tmp_path / "plain", progress=False)
    assert len(plain.optimizer.param_groups) == 1  # checkpoints of runs without a multiplier keep one group
