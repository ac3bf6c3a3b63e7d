"""`make demo` trains configs/shapes/demo.yaml: the linear baseline's model and compute with a better
optimiser, so that it keeps the baseline's few minutes on a laptop CPU."""

from __future__ import annotations

from pathlib import Path

from protoseg.config import config_to_dict, load_config
from protoseg.engine.resume import config_changes

ROOT = Path(__file__).resolve().parents[1]


def test_demo_differs_from_the_baseline_in_the_optimiser_only():
    demo = load_config(ROOT / "configs" / "shapes" / "demo.yaml")
    baseline = load_config(ROOT / "configs" / "shapes" / "linear.yaml")
    assert set(config_changes(baseline, demo)) == {"train.optimizer", "train.lr"}
    assert config_to_dict(demo)["train"]["optimizer"] == "adamw"


def test_make_demo_trains_the_demo_config():
    makefile = (ROOT / "Makefile").read_text()
    assert "protoseg train configs/shapes/demo.yaml" in makefile
