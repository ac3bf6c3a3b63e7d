"""Rebuild a trained model from a checkpoint (its config and class metadata travel inside it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config, config_from_dict, load_config
from ..models.builder import build_model
from .checkpoint import load_checkpoint


def find_checkpoint(run_dir: str | Path) -> Path:
    """``best.pt`` of a run folder, else ``last.pt``."""
    run_dir = Path(run_dir)
    for name in ("best.pt", "last.pt"):
        path = run_dir / "checkpoints" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"no checkpoints/best.pt or checkpoints/last.pt in {run_dir}")


def config_for(run_dir_or_config: str | Path, overrides: list[str] | None = None) -> Config:
    """The config of a run folder (its ``config.yaml``) or of a YAML file, with overrides."""
    path = Path(run_dir_or_config)
    if path.is_dir():
        path = path / "config.yaml"
    return load_config(path, overrides)


def load_trained_model(
    checkpoint: str | Path, device: torch.device, cfg: Config | None = None
) -> tuple[nn.Module, Config, dict[str, Any]]:
    """(model in eval mode on ``device``, its config, dataset metadata) from a checkpoint.

    ``cfg`` overrides the config stored in the checkpoint (e.g. other eval settings); the model
    architecture must still match the checkpoint's weights.
    """
    state = load_checkpoint(checkpoint)
    cfg = cfg or config_from_dict(state["config"])
    meta = state["dataset"]
    num_classes = meta["num_classes"] - (1 if cfg.model.wsss else 0)
    # never reach for hub weights when the trained weights are about to replace them
    cfg.model.backbone.pretrained = False
    model = build_model(cfg, num_classes)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"checkpoint {checkpoint} does not match the model of its config: {error}") from None
    return model.to(device).eval(), cfg, meta
