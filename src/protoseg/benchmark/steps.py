"""One method ready to benchmark: model, criterion, optimiser and batch, in the steady state.

The training step is the trainer's own (:class:`protoseg.engine.step.TrainStep`), so the benchmark
times exactly the code that ``protoseg train`` runs per iteration (forward and losses under autocast,
backward through the grad scaler, optimiser, lr schedule and the method's after-step updates).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..config import Config
from ..engine.amp import amp_settings
from ..engine.optim import build_optimizer, build_scheduler
from ..engine.step import TrainStep
from ..methods import WEAKLY_SUPERVISED, DatasetInfo, Method, build_method
from ..prototypes import PixelQueue, RegionMemory
from .batches import shapes_batch
from .settings import STEADY_STATE_ITERATION, BenchmarkSettings, family_of


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


def prepare_steady_state(model: Method, seed: int = 0) -> None:
    """Bring the method's memories to their steady state: full RCA memory (and its k-means prototypes
    installed), full ContrastiveSeg queues. Models without a memory are left as they are."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():
        if isinstance(module, RegionMemory):
            fill_region_memory(module, generator)
        elif isinstance(module, PixelQueue):
            fill_pixel_queue(module, generator)
    model.refresh(generator)


class MethodBench:
    """A method with its training step (the trainer's own :class:`~protoseg.engine.step.TrainStep`)
    and a fixed batch, ready to step or infer. ``iteration`` stays at :data:`STEADY_STATE_ITERATION`
    so every loss term is on."""

    def __init__(self, method: str, settings: BenchmarkSettings, batch_seed: int = 0) -> None:
        self.name = method
        self.cfg: Config = settings.config(method)
        self.device = settings.device
        self.is_wsss = family_of(method) == WEAKLY_SUPERVISED
        torch.manual_seed(self.cfg.train.seed)
        dataset = DatasetInfo(settings.dataset_classes(method), has_background=True)
        self.method = build_method(self.cfg.model, dataset, self.cfg.train.seed).to(self.device)
        self.method.train()
        train = self.cfg.train
        optimizer = build_optimizer(
            self.method, train.optimizer, train.lr, train.momentum, train.weight_decay, train.backbone_lr_mult
        )
        scheduler = build_scheduler(optimizer, train.iterations, train.poly_power, train.lr_warmup_iters)
        amp = amp_settings(train.amp, train.amp_dtype, self.device)
        self.step = TrainStep(self.method, optimizer, scheduler, amp, self.device, train.grad_clip)
        self.iteration = STEADY_STATE_ITERATION
        prepare_steady_state(self.method, seed=train.seed)
        height, width = self.cfg.data.crop_size
        self.batch = shapes_batch(
            train.batch_size, height, width, settings.wsss_num_classes, self.device, seed=batch_seed
        )

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.step.optimizer

    @property
    def use_amp(self) -> bool:
        return self.step.amp.enabled

    @property
    def amp_dtype(self) -> torch.dtype:
        return self.step.amp.dtype

    @property
    def batch_size(self) -> int:
        return int(self.batch["image"].shape[0])

    def losses(self) -> dict[str, Any]:
        """The forward half of a training step (method under autocast), as the trainer runs it."""
        return self.step.losses(self.batch, self.iteration)

    def train_step(self) -> dict[str, Any]:
        """One training iteration, exactly as the trainer runs it."""
        self.method.train()
        return self.step(self.batch, self.iteration)

    @torch.inference_mode()
    def infer(self) -> torch.Tensor:
        """Inference on the batch: the segmentor's logits at input size, or the WSSS CAMs."""
        return self.inference_forward()

    def inference_forward(self) -> torch.Tensor:
        """What :meth:`infer` runs, without its ``inference_mode`` (the caller picks the grad mode)."""
        self.method.eval()
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            if self.is_wsss:
                return self.method.cams(self.batch["image"])
            return self.method.network.predict(self.batch["image"])
