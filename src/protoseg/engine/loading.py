"""Rebuild a trained method from a checkpoint (its config and class metadata travel inside it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import Config, config_from_dict, load_config
from ..methods import DatasetInfo, Method, build_method
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


def migrate_state_dict(state: dict[str, torch.Tensor], method: Method) -> dict[str, torch.Tensor]:
    """A state dict of a checkpoint written before the method registry, in today's layout: a
    segmentor's ``backbone.* / decoder.* / head.*`` now live under ``network.``, ContrastiveSeg's
    ``head.memory.*`` under ``memory.``; a plain CAM network has no projector any more."""
    expected = method.state_dict()
    if all(key in expected for key in state):
        return state
    migrated = {}
    for key, value in state.items():
        if key.startswith("head.memory."):
            key = "memory." + key[len("head.memory.") :]
        elif key.split(".")[0] in ("backbone", "decoder", "head"):
            key = "network." + key
        if key == "network.projector.weight" and key not in expected:
            continue
        migrated[key] = value
    return migrated


def load_trained_method(
    checkpoint: str | Path, device: torch.device, cfg: Config | None = None
) -> tuple[Method, Config, dict[str, Any]]:
    """(method in eval mode on ``device``, its config, dataset metadata) from a checkpoint.

    ``cfg`` overrides the config stored in the checkpoint (e.g. other eval settings); the model
    architecture must still match the checkpoint's weights. The metadata also holds the checkpoint's
    training ``iteration``.
    """
    state = load_checkpoint(checkpoint)
    cfg = cfg or config_from_dict(state["config"], source=f"the config in {checkpoint}")
    meta = {**state["dataset"], "iteration": state.get("iteration")}
    # never reach for hub weights when the trained weights are about to replace them
    cfg.model.backbone.pretrained = False
    method = build_method(cfg.model, DatasetInfo.of(meta), cfg.train.seed)
    try:
        method.load_state_dict(migrate_state_dict(state["model"], method))
    except RuntimeError as error:
        stored = state.get("config", {}).get("model", {})
        stored_method = stored.get("method") or stored.get("wsss") or stored.get("head")
        raise ValueError(
            f"checkpoint {checkpoint} holds a model.method={stored_method} model that does not match the "
            f"model.method={cfg.model.method} model of the config "
            f"({str(error).splitlines()[0]})"
        ) from None
    return method.to(device).eval(), cfg, meta
