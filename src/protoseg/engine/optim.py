"""Optimiser and poly learning-rate schedule with linear warm-up."""

from __future__ import annotations

import torch
from torch import nn


def find_backbone(model: nn.Module) -> nn.Module | None:
    """``model.backbone``, else ``model.network.backbone`` (a method's network), else None."""
    for owner in (model, getattr(model, "network", None)):
        backbone = getattr(owner, "backbone", None)
        if isinstance(backbone, nn.Module):
            return backbone
    return None


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    backbone_lr_mult: float = 1.0,
) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters; the backbone's lr is ``lr * backbone_lr_mult``.

    A model (a method) whose ``parameter_groups(lr, weight_decay)`` returns groups gets those instead
    (the WSSS releases' 1x / 2x / 10x / 20x groups; ``backbone_lr_mult`` does not apply then); a group
    may set its own ``weight_decay`` and SGD ``momentum``. The backbone is ``model.backbone`` or, for a
    method, ``model.network.backbone`` (with ``backbone_lr_mult != 1`` only: otherwise one group holds
    every parameter, the layout of the checkpoints written before).

    Only ``nn.Parameter`` objects are optimised: prototypes and memories are buffers and never
    reach the optimiser (nor its weight decay).
    """
    custom = getattr(model, "parameter_groups", None)
    groups = custom(lr, weight_decay) if callable(custom) else None
    if groups is not None:
        groups = [{**group, "initial_lr": group["lr"]} for group in groups]
    else:
        backbone = getattr(model, "backbone", None)
        if backbone is None and backbone_lr_mult != 1.0:
            backbone = find_backbone(model)
        backbone_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
        backbone_params = [p for p in model.parameters() if p.requires_grad and id(p) in backbone_ids]
        other_params = [p for p in model.parameters() if p.requires_grad and id(p) not in backbone_ids]
        groups = [{"params": other_params, "lr": lr, "initial_lr": lr}]
        if backbone_params:
            backbone_lr = lr * backbone_lr_mult
            groups.append({"params": backbone_params, "lr": backbone_lr, "initial_lr": backbone_lr})
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}' (valid: sgd, adamw)")


def poly_lr_factor(iteration: int, total: int, power: float = 0.9, lr_warmup_iters: int = 0) -> float:
    """lr multiplier: linear warm-up from 0.1 to 1 over ``lr_warmup_iters``, then ``(1 - t/T)^power``."""
    if lr_warmup_iters > 0 and iteration < lr_warmup_iters:
        return 0.1 + 0.9 * iteration / lr_warmup_iters
    return max(0.0, 1.0 - iteration / max(1, total)) ** power


def build_scheduler(
    optimizer: torch.optim.Optimizer, total: int, power: float = 0.9, lr_warmup_iters: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda iteration: poly_lr_factor(iteration, total, power, lr_warmup_iters)
    )
