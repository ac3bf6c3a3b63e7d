"""Every shipped built-in-benchmark config trains end to end (tiny backbone, a few iterations)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from protoseg.config import load_config
from protoseg.data.shapes import generate_shapes
from protoseg.engine.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [
    "linear", "protoseg", "contrast", "protoseg_contrast", "wsss_cam", "wsss_oaa", "wsss_ppc", "wsss_rca"
]  # fmt: skip


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, size=64, num_train=12, num_val=4, seed=5)
    return root


@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains(name, shapes_root, tmp_path):
    overrides = [
        f"data.root={shapes_root}",
        "data.crop_size=[64, 64]",
        "data.num_workers=0",
        "model.backbone.name=tiny",
        "model.backbone.pretrained=false",
        "train.iterations=4",
        "train.batch_size=4",
        "train.log_interval=2",
        "train.val_interval=4",
        "train.checkpoint_interval=0",
        "train.device=cpu",
    ]
    cfg = load_config(ROOT / f"configs/shapes/{name}.yaml", overrides)
    if cfg.model.method in ("contrast", "protoseg_contrast"):
        cfg.model.contrast.start_iter = 2
        cfg.model.contrast.max_views = 8  # 16x16 features: a class needs > max_views pixels
    if cfg.model.method == "rca":
        cfg.model.rca.contrast_start_iter = 1
        cfg.model.rca.refresh_interval = 2
        cfg.model.rca.memory_size = 16
    trainer = Trainer(cfg, tmp_path / name, progress=False)
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    metrics = trainer.train()
    assert metrics is not None and 0.0 <= metrics["mIoU"] <= 100.0
    changed = [k for k, v in trainer.method.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "training changed nothing"
    records = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    import json

    losses = [json.loads(r) for r in records if '"train"' in r]
    assert all(np.isfinite(r["loss"]) for r in losses)
    if cfg.model.method in ("contrast", "protoseg_contrast"):
        assert any(r.get("contrast", 0) > 0 for r in losses), "contrast never switched on after warm-up"
    if cfg.model.method == "ppc":
        assert all(r["cp"] > 0 for r in losses)
