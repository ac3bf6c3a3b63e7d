"""The training loop: a method's :class:`~protoseg.engine.step.TrainStep` per iteration and hooks around
it (periodic refresh, logging, checkpoints, validation), for every method alike.

The trainer knows no method by name: what a method needs (its inputs, its state updates, its periodic
refresh, DDP's ``find_unused_parameters``, its validation labels) it asks the method.

A resumed run continues the exact same stream of batches (seeded sampler) and random draws, so it
ends with the same weights as an uninterrupted run: checkpoints hold every RNG state (the global ones
and each rank's method generators), and neither validation nor the creation of data loaders draws
from the training's random streams. ``last.pt`` is written before each validation, so a failing
validation loses no training.

Faults: the run folder is locked for the trainer's lifetime; the dataset's files are checked before the
first iteration (:mod:`~protoseg.engine.data_check`); a resume checks the config against the
checkpoint's (:mod:`~protoseg.engine.resume`) and cuts ``metrics.jsonl`` back to the checkpoint; Ctrl-C
or SIGTERM stop after the current iteration with a saved ``last.pt``
(:class:`~protoseg.engine.interrupt.TrainingInterrupted`).
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import Config, config_from_dict, config_to_dict
from ..data.sampler import SeededSampler
from ..methods import DatasetInfo, Method, RunInfo, build_method
from ..ops.random import generator_states, set_generator_states
from .amp import amp_settings
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data_check import check_split_files
from .datasets import build_split_dataset
from .device import resolve_device
from .distributed import (
    DistributedContext,
    any_rank,
    broadcast_buffers,
    broadcast_error,
    cleanup,
    gather_objects,
    init_distributed,
)
from .evaluator import evaluate, validation_settings
from .hooks import Checkpointer, HookBase, MetricsLogger, PeriodicRefresh, ProgressReporter, Validator
from .interrupt import StopRequest, TrainingInterrupted, ignore_interrupts_in_worker
from .optim import build_optimizer, build_scheduler
from .resume import FREE_KEYS, apply_optimizer_settings, check_resume_config, describe_changes
from .run_folder import RunFolder
from .step import TrainStep


class ValidationOverlapWarning(UserWarning):
    """The validation split shares images with the training split."""


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
    """(train, val) datasets of ``cfg.data``; the training set reads ``data.label_dir`` masks if set.
    Warns (:class:`ValidationOverlapWarning`) when the validation split shares images with the
    training split (a ``folder`` dataset without split lists or split folders)."""
    train = build_split_dataset(cfg.data, cfg.data.train_split, train=True)
    val = build_split_dataset(cfg.data, cfg.data.val_split)
    shared = len({str(path) for path in train.image_paths} & {str(path) for path in val.image_paths})
    if shared:
        warnings.warn(
            f"validation split '{cfg.data.val_split}' shares {shared} of its {len(val)} images with the "
            f"training split '{cfg.data.train_split}' (a {cfg.data.name} dataset without split files or "
            "folders): validation scores measure the fit to the training images, not generalisation",
            ValidationOverlapWarning,
            stacklevel=2,
        )
    return train, val


def check_dataset_files(cfg: Config, train_set, val_set, context: DistributedContext, progress: bool) -> None:
    """Check the training and validation splits' files on the main rank (see
    :mod:`~protoseg.engine.data_check`); every rank raises the same error when one is bad."""
    message = None
    if context.is_main:
        try:
            for dataset, role, split in (
                (train_set, "training", cfg.data.train_split),
                (val_set, "validation", cfg.data.val_split),
            ):
                check_split_files(dataset, f"{role} split '{split}' of {cfg.data.root}", progress=progress)
        except (OSError, ValueError) as error:
            message = str(error)
    message = broadcast_error(message, context)
    if message is not None:
        raise ValueError(message)


class Trainer:
    """Train ``cfg`` into ``run_dir`` (config.yaml, checkpoints/{last,best}.pt, metrics.jsonl, tb/).

    ``progress``: a progress bar on a terminal (plain log lines otherwise, and with ``progress=False``).
    ``resume``: continue from ``last.pt``; a config that differs from the checkpoint's is refused unless
    ``change_config`` (see :mod:`~protoseg.engine.resume`).
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        change_config: bool = False,
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        self.context: DistributedContext = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.context.enabled:
            self.device = torch.device("cuda", self.context.local_rank)
        amp = amp_settings(cfg.train.amp, cfg.train.amp_dtype, self.device)  # checked before any file
        self.run = RunFolder(run_dir, writer=self.context.is_main)
        self.run.prepare(resume, overwrite)
        try:
            self._build(cfg, amp, resume, change_config, progress)
        except BaseException:
            self.run.unlock(failed=True)
            raise

    def _build(self, cfg: Config, amp, resume: bool, change_config: bool, progress: bool) -> None:
        self.progress = progress
        self.resumed = resume
        self.config_changes: dict[str, tuple] = {}
        state = None
        if resume:
            state = load_checkpoint(self.run.last)
            stored = config_from_dict(state["config"], source=f"the config in {self.run.last}")
            self.config_changes = check_resume_config(
                stored, cfg, change_config, str(self.run.last), int(state["iteration"])
            )

        seed_everything(cfg.train.seed)
        self.train_set, self.val_set = build_datasets(cfg)
        check_dataset_files(cfg, self.train_set, self.val_set, self.context, progress)
        dataset = DatasetInfo.of(self.train_set)
        self.method: Method = build_method(cfg.model, dataset, cfg.train.seed).to(self.device)
        train = cfg.train
        self.optimizer = build_optimizer(
            self.method, train.optimizer, train.lr, train.momentum, train.weight_decay, train.backbone_lr_mult
        )
        scheduler = build_scheduler(self.optimizer, train.iterations, train.poly_power, train.lr_warmup_iters)
        self.step = TrainStep(self.method, self.optimizer, scheduler, amp, self.device, train.grad_clip)
        self.iteration = 0
        self.saved_iteration: int | None = None
        self.max_iterations = train.iterations
        self.stop_iteration = train.iterations
        self.best_score = -math.inf
        self.last_terms: dict[str, torch.Tensor] = {}
        self.last_metrics: dict[str, Any] | None = None
        if state is not None:
            self._restore(state)
            self.saved_iteration = self.iteration
            self.run.truncate_metrics(self.iteration)
            if self.config_changes and self.context.is_main:
                kept = self.run.keep_config(self.iteration)
                print(
                    f"resuming at iteration {self.iteration} with config changes: "
                    f"{describe_changes(self.config_changes)}"
                    + (f" (the previous config is kept as {kept})" if kept else ""),
                    flush=True,
                )
        self.step.module = self._wrap_ddp(self.method)
        self.run.save_config(cfg)
        # per-run state outside the checkpoint (OAA's accumulated maps) goes into the run folder
        self.method.attach_run(
            RunInfo(
                self.run.path,
                self.iterations_per_epoch,
                train.iterations,
                self.context.rank,
                self.context.world_size,
                tuple(getattr(self.train_set, "names", ())),
            )
        )
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
        # on resume, events logged after the checkpoint are dropped (the resumed run logs them again)
        return SummaryWriter(
            log_dir=str(self.run.tensorboard), purge_step=self.iteration + 1 if self.resumed else None
        )

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
            worker_init_fn=ignore_interrupts_in_worker if self.cfg.data.num_workers > 0 else None,
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
        fresh_settings = [
            {key: value for key, value in group.items() if key != "params"}
            for group in self.optimizer.param_groups
        ]
        try:
            self.method.load_state_dict(state["model"])
        except RuntimeError as error:
            raise ValueError(self._mismatch(state, "model weights", error)) from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as error:
            raise ValueError(self._mismatch(state, "optimiser state", error)) from None
        self.step.scheduler.load_state_dict(state["scheduler"])
        if any(key not in FREE_KEYS for key in self.config_changes):
            apply_optimizer_settings(self.optimizer, self.step.scheduler, fresh_settings)
        if state["scaler"]:  # empty when saved without loss scaling: a scaled run then starts afresh
            self.step.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best_score = float(state["best_score"])
        set_rng_state(state["rng"])
        method_rng = state.get("method_rng") or []
        if len(method_rng) == self.context.world_size:
            set_generator_states(self.method, method_rng[self.context.rank])

    def _mismatch(self, state: dict[str, Any], what: str, error: Exception) -> str:
        """One line naming the checkpoint's model and the config's model when they do not fit."""

        def describe(model: dict[str, Any]) -> str:
            method = model.get("method") or model.get("wsss") or model.get("head")
            backbone = (model.get("backbone") or {}).get("name")
            return f"model.method={method} (backbone {backbone})"

        stored = describe(state.get("config", {}).get("model", {}))
        given = describe(config_to_dict(self.cfg)["model"])
        return (
            f"cannot resume: {self.run.last} holds a {stored} model, the config builds a {given} model "
            f"and its {what} do not fit ({str(error).strip().splitlines()[0]})"
        )

    def save(self, name: str) -> Path:
        """Write ``checkpoints/<name>.pt`` (the main process writes; every rank must call it, since the
        ranks' method generator states are gathered into it)."""
        path = self.run.checkpoints / f"{name}.pt"
        method_rng = gather_objects(generator_states(self.method), self.context)
        if self.context.is_main:
            save_checkpoint(self._state(method_rng), path)
        if name == "last":
            self.saved_iteration = self.iteration
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
                progress=self.progress and self.context.is_main and sys.stderr.isatty(),
            )

    # -- the loop ---------------------------------------------------------------------------
    def train(self, until: int | None = None) -> dict[str, Any] | None:
        """Run the schedule to ``train.iterations`` (or stop after iteration ``until``, keeping the
        schedule: an interruption that ``--resume`` continues). Returns the last val metrics. The run
        folder stays locked until it returns.

        SIGINT / SIGTERM (in the main thread) stop training after the current iteration: ``last.pt`` is
        saved and :class:`TrainingInterrupted` raised (every DDP rank stops at the same iteration)."""
        self.stop_iteration = self.max_iterations if until is None else min(until, self.max_iterations)
        self.run.lock()  # held from the construction on; taken again by a second train() call
        try:
            return self._train()
        finally:
            self.run.unlock()

    def _train(self) -> dict[str, Any] | None:
        self.method.train()
        with preserved_rng():
            batches = iter(self._train_loader())
        with StopRequest() as stop:
            for hook in self.hooks:
                hook.before_train()
            try:
                while self.iteration < self.stop_iteration:
                    if any_rank(stop.requested, self.context):
                        self._stop(stop.signal_number or signal.SIGTERM)
                    self.last_terms = self.step(next(batches), self.iteration)
                    self.iteration += 1
                    for hook in self.hooks:
                        hook.after_step()
            except Exception as error:
                if stop.requested and not self.context.enabled and not isinstance(error, TrainingInterrupted):
                    # e.g. a validation's data loader worker ended by the same Ctrl-C: the checkpoint
                    # written before the validation stands (under DDP the error is reported as it is:
                    # it may be a peer's failure that made torchrun send the signal)
                    raise self._interrupted(stop.signal_number) from error
                raise
            finally:
                for hook in self.hooks:
                    hook.after_train()
        return self.last_metrics

    def _stop(self, signal_number: int) -> None:
        """Save ``last.pt`` (unless it holds this iteration already) and raise ``TrainingInterrupted``."""
        if self.saved_iteration != self.iteration:
            self.save("last")
        raise self._interrupted(signal_number)

    def _interrupted(self, signal_number: int) -> TrainingInterrupted:
        return TrainingInterrupted(self.iteration, self.saved_iteration, str(self.run.last), signal_number)

    def close(self, failed: bool = False) -> None:
        """Release the run folder and leave the process group. After a failure the ranks do not wait
        for each other (a peer may be stuck in a collective the failed rank never joins)."""
        self.run.unlock()
        if not failed:
            cleanup(self.context)
