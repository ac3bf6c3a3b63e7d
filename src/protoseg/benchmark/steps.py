"""One method ready to benchmark: model, criterion, optimiser and batch, in the steady state.

The training step is the trainer's own (:meth:`protoseg.engine.trainer.Trainer._step`), run on the
state held here, so the benchmark times exactly the code that ``protoseg train`` runs per iteration
(forward under autocast, criterion, backward through the grad scaler, optimiser and lr schedule).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..engine.amp import amp_settings
from ..engine.optim import build_optimizer, build_scheduler
from ..engine.trainer import Trainer
from ..models.builder import build_criterion, build_model
from ..prototypes import PixelQueue, RegionMemory
from .batches import shapes_batch
from .settings import STEADY_STATE_ITERATION, WSSS, BenchmarkSettings, family_of


def fill_region_memory(memory: RegionMemory, generator: torch.Generator, modes: int = 20) -> None:
    """Fill every slot of an RCA memory with Gaussian-mixture points (``modes`` per class), as region
    embeddings cluster: the steady state after the first epoch."""
    classes, size, dim = memory.memory.shape
    device = memory.memory.device
    centres = torch.randn(classes, modes, dim, generator=generator, device=device) * 3
    pick = torch.randint(0, modes, (classes, size), generator=generator, device=device)
    points = torch.gather(centres, 1, pick.unsqueeze(-1).expand(-1, -1, dim))
    noise = torch.randn(classes, size, dim, generator=generator, device=device)
    with torch.no_grad():
        memory.memory.copy_(points + noise)
        memory.count.fill_(size)


def fill_pixel_queue(queue: PixelQueue, generator: torch.Generator) -> None:
    """Fill both queues of a ContrastiveSeg memory with unit vectors (a full memory: the steady state)."""
    with torch.no_grad():
        for bank, filled in (
            (queue.pixel_queue, queue.pixel_filled),
            (queue.segment_queue, queue.segment_filled),
        ):
            noise = torch.randn(bank.shape, generator=generator, device=bank.device)
            bank.copy_(F.normalize(noise, dim=-1))
            filled.fill_(bank.shape[1])


def prepare_steady_state(model: nn.Module, seed: int = 0) -> None:
    """Bring the method's memories to their steady state: full RCA memory (and its k-means prototypes
    installed), full ContrastiveSeg queues. Models without a memory are left as they are."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():
        if isinstance(module, RegionMemory):
            fill_region_memory(module, generator)
        elif isinstance(module, PixelQueue):
            fill_pixel_queue(module, generator)
    refresh = getattr(model, "refresh", None)
    if callable(refresh):
        refresh(generator)


class MethodBench:
    """A method (head or WSSS method) with its optimiser and a fixed batch, ready to step or infer.

    Holds the attributes that :meth:`Trainer._step` and :meth:`Trainer._losses` read (``device``,
    ``cfg``, ``model``, ``ddp_model``, ``criterion``, ``optimizer``, ``scaler``, ``scheduler``,
    ``use_amp``, ``amp_dtype``, ``is_wsss``, ``iteration``). ``iteration`` stays at
    :data:`STEADY_STATE_ITERATION` so every loss term is on.
    """

    def __init__(self, method: str, settings: BenchmarkSettings, batch_seed: int = 0) -> None:
        self.method = method
        self.cfg: Config = settings.config(method)
        self.device = settings.device
        self.is_wsss = family_of(method) == WSSS
        torch.manual_seed(self.cfg.train.seed)
        self.model = build_model(self.cfg, settings.model_num_classes(method)).to(self.device)
        self.model.train()
        self.ddp_model = self.model
        self.criterion = None if self.is_wsss else build_criterion(self.cfg).to(self.device)
        train = self.cfg.train
        self.optimizer = build_optimizer(
            self.model, train.optimizer, train.lr, train.momentum, train.weight_decay, train.backbone_lr_mult
        )
        self.scheduler = build_scheduler(
            self.optimizer, train.iterations, train.poly_power, train.warmup_iters
        )
        amp = amp_settings(train.amp, train.amp_dtype, self.device)
        self.use_amp, self.amp_dtype = amp.enabled, amp.dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp.loss_scaling)
        self.iteration = STEADY_STATE_ITERATION
        prepare_steady_state(self.model, seed=train.seed)
        height, width = self.cfg.data.crop_size
        self.batch = shapes_batch(
            train.batch_size, height, width, settings.wsss_num_classes, self.device, seed=batch_seed
        )

    @property
    def batch_size(self) -> int:
        return int(self.batch["image"].shape[0])

    def _losses(self, batch: dict[str, Any]) -> dict[str, Any]:
        return Trainer._losses(self, batch)  # type: ignore[arg-type]

    def train_step(self) -> dict[str, Any]:
        """One training iteration, exactly as the trainer runs it."""
        self.model.train()
        return Trainer._step(self, self.batch)  # type: ignore[arg-type]

    @torch.inference_mode()
    def infer(self) -> torch.Tensor:
        """Inference on the batch: ``Segmentor.predict`` (logits at input size) or the WSSS CAMs."""
        return self.inference_forward()

    def inference_forward(self) -> torch.Tensor:
        """What :meth:`infer` runs, without its ``inference_mode`` (the caller picks the grad mode)."""
        self.model.eval()
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            if self.is_wsss:
                return self.model.cams(self.batch["image"])
            return self.model.predict(self.batch["image"])
