"""Resuming honestly: a resumed run continues the config its checkpoint was trained with.

A config that differs from the checkpoint's is refused, naming each changed key, unless the user asks
for the changes (``protoseg train --resume --change-config``); then every changed value is put to use
from the resumed iteration on (the optimiser's hyperparameters and the schedule's base learning rates
are set from the new config, not left at the checkpoint's), so ``config.yaml`` never records a value
that training did not use. A few keys cannot change at all, and a few only steer logging and
bookkeeping and may always change.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import Config, config_to_dict

FREE_KEYS = (
    "data.num_workers",
    "data.root",
    "train.device",
    "train.log_interval",
    "train.val_interval",
    "train.checkpoint_interval",
)
"""Keys that change no result: they may differ on resume without ``--change-config``."""

FIXED_KEYS = {
    "train.seed": "the resumed run continues the checkpoint's random streams",
    "train.optimizer": "the checkpoint holds the state of its optimiser",
}
"""Keys that can never change on resume, with the reason."""

OPTIMIZER_SETTINGS = ("initial_lr", "momentum", "weight_decay")


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(stored: Config, given: Config) -> dict[str, tuple[Any, Any]]:
    """``{key: (stored value, given value)}`` for every key whose value differs."""
    old, new = flatten(config_to_dict(stored)), flatten(config_to_dict(given))
    return {
        key: (old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    }


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())


def check_resume_config(
    stored: Config, given: Config, allow_changes: bool, checkpoint: str, iteration: int
) -> dict[str, tuple[Any, Any]]:
    """The changes of ``given`` over the checkpoint's config ``stored`` that resuming will apply;
    ``ValueError`` naming them when they are not allowed (see the module docstring)."""
    changes = config_changes(stored, given)
    fixed = {key: change for key, change in changes.items() if key in FIXED_KEYS}
    if fixed:
        key = next(iter(fixed))
        raise ValueError(
            f"--resume: {describe_changes(fixed)} differs from {checkpoint} and cannot change on resume "
            f"({FIXED_KEYS[key]}); start a new run (another --run-dir) for it"
        )
    relevant = {key: change for key, change in changes.items() if key not in FREE_KEYS}
    if relevant and not allow_changes:
        raise ValueError(
            f"--resume: the config differs from the one {checkpoint} was trained with "
            f"({describe_changes(relevant)}); resume with the same config and --set values, or pass "
            f"--change-config to train on with the new values from iteration {iteration}"
        )
    return changes


def apply_optimizer_settings(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    settings: list[dict[str, Any]],
) -> None:
    """Give the optimiser's parameter groups the hyperparameters ``settings`` (those of an optimiser
    built from the new config: ``initial_lr``, ``momentum``, ``weight_decay``) after a checkpoint's
    state replaced them, and the schedule the new base learning rates; the current learning rate is
    recomputed from the schedule at its current step."""
    for group, fresh in zip(optimizer.param_groups, settings):
        for key in OPTIMIZER_SETTINGS:
            if key in fresh:
                group[key] = fresh[key]
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base_lr, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
