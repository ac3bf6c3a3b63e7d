"""Rebuilding trained methods from checkpoints, old layouts included; the method registry's errors."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from protoseg.config import config_to_dict, load_config
from protoseg.engine.checkpoint import save_checkpoint
from protoseg.engine.loading import load_trained_method
from protoseg.methods import DatasetInfo, build_method, method_class

TINY = ["model.backbone.name=tiny", "model.backbone.pretrained=false", "model.decoder.channels=8"]
META = {"num_classes": 3, "class_names": ["a", "b", "c"], "palette": [[0, 0, 0]] * 3, "has_background": True}


def old_layout(state: dict) -> dict:
    """The state dict layout of checkpoints written before the method registry."""
    old = {}
    for key, value in state.items():
        if key.startswith("memory."):
            key = "head." + key
        elif key.startswith("network.") and key.split(".")[1] in ("backbone", "decoder", "head"):
            key = key[len("network.") :]
        old[key] = value
    return old


@pytest.mark.parametrize(
    "method, old_keys", [("linear", {"head": "linear"}), ("contrast", {"head": "contrast"})]
)
def test_a_checkpoint_of_the_old_layout_loads_into_todays_method(tmp_path, method, old_keys):
    overrides = TINY + [
        f"model.method={method}",
        "model.contrast.use_memory=true",
        "model.contrast.memory_size=4",
    ]
    cfg = load_config(None, overrides)
    trained = build_method(cfg.model, DatasetInfo.of(META))
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(torch.randn_like(parameter))
    values = config_to_dict(cfg)
    del values["model"]["method"]
    values["model"].update(old_keys)
    path = tmp_path / "old.pt"
    save_checkpoint({"model": old_layout(trained.state_dict()), "config": values, "dataset": META}, path)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        loaded, loaded_cfg, _ = load_trained_method(path, torch.device("cpu"))
    assert loaded_cfg.model.method == method
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_checkpoint_of_another_method_names_both(tmp_path):
    cfg = load_config(None, TINY + ["model.method=protoseg"])
    method = build_method(cfg.model, DatasetInfo.of(META))
    path = tmp_path / "proto.pt"
    save_checkpoint({"model": method.state_dict(), "config": config_to_dict(cfg), "dataset": META}, path)
    linear = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, method="linear"))
    with pytest.raises(ValueError, match="model.method=protoseg.*model.method=linear"):
        load_trained_method(path, torch.device("cpu"), linear)


def test_unknown_method_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown model.method 'segformer'.*linear, protoseg, contrast"):
        method_class("segformer")


def test_a_weakly_supervised_method_needs_a_background_class():
    cfg = load_config(None, TINY + ["model.method=cam"])
    with pytest.raises(ValueError, match="model.method=cam.*background"):
        build_method(cfg.model, DatasetInfo(num_classes=3, has_background=False))
    assert build_method(cfg.model, DatasetInfo(num_classes=3, has_background=True)).num_classes == 2
