"""The training loop: a method's :class:`~protoseg.engine.step.TrainStep` per iteration and hooks around
it (periodic refresh, logging, checkpoints, validation), for every method alike.

The trainer knows no method by name: what a method needs (its inputs, its state updates, its periodic
refresh, DDP's ``find_unused_parameters``, its validation labels) it asks the method.

A resumed run continues the exact same stream of batches (seeded sampler) and random draws, so it
ends with the same weights as an uninterrupted run: checkpoints hold every RNG state (the global ones
and each rank's method generators), and neither validation nor the creation of data loaders draws
from the training's random streams. ``last.pt`` is written before each validation, so a failing
validation loses no training.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import Config, config_to_dict
from ..data.sampler import SeededSampler
from ..methods import DatasetInfo, Method, build_method
from ..ops.random import generator_states, set_generator_states
from .amp import amp_settings
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .datasets import build_split_dataset
from .device import resolve_device
from .distributed import DistributedContext, broadcast_buffers, cleanup, gather_objects, init_distributed
from .evaluator import evaluate, validation_settings
from .hooks import Checkpointer, HookBase, MetricsLogger, PeriodicRefresh, ProgressReporter, Validator
from .optim import build_optimizer, build_scheduler
from .run_folder import RunFolder
from .step import TrainStep


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block without changing any RNG state (Python, NumPy, torch CPU and CUDA)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def dataset_meta(dataset) -> dict[str, Any]:
    """What inference needs to know about the classes, stored in every checkpoint."""
    return {
        "num_classes": int(dataset.num_classes),
        "class_names": list(dataset.class_names),
        "palette": [list(map(int, colour)) for colour in dataset.palette],
        "has_background": bool(dataset.has_background),
    }


def build_datasets(cfg: Config) -> tuple:
    """(train, val) datasets of ``cfg.data``; the training set reads ``data.label_dir`` masks if set."""
    train = build_split_dataset(cfg.data, cfg.data.train_split, train=True)
    return train, build_split_dataset(cfg.data, cfg.data.val_split)


class Trainer:
    """Train ``cfg`` into ``run_dir`` (config.yaml, checkpoints/{last,best}.pt, metrics.jsonl, tb/).

    ``progress``: a progress bar on a terminal (plain log lines otherwise, and with ``progress=False``).
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        self.context: DistributedContext = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.context.enabled:
            self.device = torch.device("cuda", self.context.local_rank)
        amp = amp_settings(cfg.train.amp, cfg.train.amp_dtype, self.device)  # checked before any file
        self.run = RunFolder(run_dir, writer=self.context.is_main)
        self.run.prepare(resume, overwrite)
        self.progress = progress

        seed_everything(cfg.train.seed)
        self.train_set, self.val_set = build_datasets(cfg)
        dataset = DatasetInfo.of(self.train_set)
        self.method: Method = build_method(cfg.model, dataset, cfg.train.seed).to(self.device)
        train = cfg.train
        self.optimizer = build_optimizer(
            self.method, train.optimizer, train.lr, train.momentum, train.weight_decay, train.backbone_lr_mult
        )
        scheduler = build_scheduler(self.optimizer, train.iterations, train.poly_power, train.lr_warmup_iters)
        self.step = TrainStep(self.method, self.optimizer, scheduler, amp, self.device, train.grad_clip)
        self.iteration = 0
        self.max_iterations = train.iterations
        self.stop_iteration = train.iterations
        self.best_score = -math.inf
        self.last_terms: dict[str, torch.Tensor] = {}
        self.last_metrics: dict[str, Any] | None = None
        if resume:
            self._restore(load_checkpoint(self.run.last))
        self.step.module = self._wrap_ddp(self.method)
        self.run.save_config(cfg)
        self.hooks = self._default_hooks()

    # -- set-up -----------------------------------------------------------------------------
    def _wrap_ddp(self, method: Method) -> nn.Module:
        if not self.context.enabled:
            return method
        if self.device.type == "cuda" and self.cfg.model.sync_bn:
            nn.SyncBatchNorm.convert_sync_batchnorm(method)  # converts the BatchNorm children in place
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            method, device_ids=device_ids, find_unused_parameters=method.find_unused_parameters
        )

    def _default_hooks(self) -> list[HookBase]:
        train = self.cfg.train
        reporter = ProgressReporter(self.context.is_main, self.progress, train.iterations, self.iteration)
        logger = MetricsLogger(train.log_interval, reporter, self._tensorboard())
        hooks: list[HookBase] = []
        refresh_interval = self.method.refresh_interval(self.iterations_per_epoch)
        if refresh_interval > 0:
            hooks.append(PeriodicRefresh(self.method.refresh, refresh_interval))
        hooks += [
            logger,
            Checkpointer(train.checkpoint_interval, train.val_interval),
            Validator(train.val_interval, logger),
        ]
        for hook in hooks:
            hook.trainer = self
        return hooks

    def _tensorboard(self):
        if not self.context.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(log_dir=str(self.run.tensorboard))

    @property
    def iterations_per_epoch(self) -> int:
        """Training iterations per pass over the training set (all ranks together)."""
        return max(1, len(self.train_set) // (self.cfg.train.batch_size * self.context.world_size))

    def _train_loader(self) -> DataLoader:
        batch = self.cfg.train.batch_size
        sampler = SeededSampler(
            len(self.train_set),
            seed=self.cfg.train.seed,
            shuffle=True,
            rank=self.context.rank,
            world_size=self.context.world_size,
            start_index=self.iteration * batch,
        )
        return DataLoader(
            self.train_set,
            batch_size=batch,
            sampler=sampler,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=self.cfg.data.num_workers > 0,
        )

    # -- checkpoints ------------------------------------------------------------------------
    def _state(self, method_rng: list[dict]) -> dict[str, Any]:
        return {
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.step.scheduler.state_dict(),
            "scaler": self.step.scaler.state_dict(),
            "iteration": self.iteration,
            "best_score": self.best_score,
            "rng": rng_state(),
            "method_rng": method_rng,
            "config": config_to_dict(self.cfg),
            "dataset": dataset_meta(self.train_set),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when saved without loss scaling: a scaled run then starts afresh
            self.step.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best_score = float(state["best_score"])
        set_rng_state(state["rng"])
        method_rng = state.get("method_rng") or []
        if len(method_rng) == self.context.world_size:
            set_generator_states(self.method, method_rng[self.context.rank])

    def save(self, name: str) -> Path:
        """Write ``checkpoints/<name>.pt`` (the main process writes; every rank must call it, since the
        ranks' method generator states are gathered into it)."""
        path = self.run.checkpoints / f"{name}.pt"
        method_rng = gather_objects(generator_states(self.method), self.context)
        if self.context.is_main:
            save_checkpoint(self._state(method_rng), path)
        return path

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        """The method's validation metrics on the val split, on the model rank 0 saves. Leaves every
        RNG state as it found it."""
        broadcast_buffers(self.method, self.context)
        with preserved_rng():
            return evaluate(
                self.method,
                self.val_set,
                self.device,
                validation_settings(self.cfg),
                self.context,
                self.cfg.data.num_workers,
                progress=self.progress and self.context.is_main,
            )

    # -- the loop ---------------------------------------------------------------------------
    def train(self, until: int | None = None) -> dict[str, Any] | None:
        """Run the schedule to ``train.iterations`` (or stop after iteration ``until``, keeping the
        schedule: an interruption that ``--resume`` continues). Returns the last val metrics."""
        self.stop_iteration = self.max_iterations if until is None else min(until, self.max_iterations)
        self.method.train()
        with preserved_rng():
            batches = iter(self._train_loader())
        for hook in self.hooks:
            hook.before_train()
        try:
            while self.iteration < self.stop_iteration:
                self.last_terms = self.step(next(batches), self.iteration)
                self.iteration += 1
                for hook in self.hooks:
                    hook.after_step()
        finally:
            for hook in self.hooks:
                hook.after_train()
        return self.last_metrics

    def close(self) -> None:
        cleanup(self.context)
