"""One training iteration of a method: forward under autocast, backward, optimiser, schedule, updates.

:class:`TrainStep` is what ``protoseg train`` runs per iteration, and what ``protoseg benchmark``
times: the same object, so the benchmark measures exactly the trained code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..methods import Method
from .amp import AmpSettings


class TrainStep:
    """``step(batch, iteration) -> terms``: one optimisation step of ``method``.

    1. the method's input tensors go to ``device``; ``module(batch, iteration)`` (the method, or its
       DDP wrapper) runs under autocast when ``amp.enabled`` and returns the loss terms;
    2. backward through the grad scaler (loss scaling with float16 AMP only), optional gradient
       clipping, optimiser step, learning-rate schedule step;
    3. ``method.after_step(iteration)``: the method's state updates (prototypes, memories).

    Returns the terms (``"loss"`` and the detached scalars); no host synchronisation.
    """

    def __init__(
        self,
        method: Method,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        amp: AmpSettings,
        device: torch.device,
        grad_clip: float | None = None,
        module: nn.Module | None = None,
    ) -> None:
        self.method = method
        self.module = module or method
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.amp = amp
        self.device = device
        self.grad_clip = grad_clip
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp.loss_scaling)

    def to_device(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The method's inputs (:attr:`Method.inputs`) of ``batch`` on the step's device."""
        missing = [key for key in self.method.inputs if key not in batch]
        if missing:
            raise ValueError(
                f"model.method={self.method.name} trains on {', '.join(self.method.inputs)}; "
                f"the batch has no {', '.join(missing)}"
            )
        return {key: batch[key].to(self.device, non_blocking=True) for key in self.method.inputs}

    def losses(self, batch: Mapping[str, Any], iteration: int) -> dict[str, torch.Tensor]:
        """The forward half: inputs to the device, the method's losses under autocast."""
        inputs = self.to_device(batch)
        with torch.autocast(device_type=self.device.type, dtype=self.amp.dtype, enabled=self.amp.enabled):
            return self.module(inputs, iteration)

    def __call__(self, batch: Mapping[str, Any], iteration: int) -> dict[str, torch.Tensor]:
        terms = self.losses(batch, iteration)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.method.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.method.after_step(iteration)
        return terms
