"""The training loop: AMP, DDP (torchrun), poly schedule, logging, periodic validation, checkpoints.

One loop serves both kinds of run:
- fully supervised (``model.wsss`` unset): ``Segmentor`` + the head's criterion, validated by mIoU;
- weakly supervised (``model.wsss: cam | ppc | rca``): a WSSS method trained from image tags,
  validated by CAM-seed mIoU at ``eval.cam_threshold``.

A resumed run continues the exact same stream of batches (seeded sampler) and RNG states, so it
ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import Config, config_to_dict, save_config
from ..data.sampler import SeededSampler
from ..models.builder import build_criterion, build_model
from .amp import amp_settings
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .datasets import build_split_dataset
from .distributed import DistributedContext, cleanup, init_distributed
from .evaluator import evaluate_cam_seeds, evaluate_segmentation
from .optim import build_optimizer, build_scheduler


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device is '{name}' but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def model_num_classes(cfg: Config, dataset) -> int:
    """Segmentors predict every class; WSSS networks predict the foreground tags only."""
    if not cfg.model.wsss:
        return dataset.num_classes
    if not dataset.has_background:
        raise ValueError(
            f"model.wsss={cfg.model.wsss} needs a dataset with a background class (class 0); "
            f"data.name={cfg.data.name} has none"
        )
    return dataset.num_classes - 1


class Trainer:
    """Train ``cfg`` into ``run_dir`` (config.yaml, checkpoints/{last,best}.pt, metrics.jsonl, tb/)."""

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = resolve_device(cfg.train.device)
        self.context: DistributedContext = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.context.enabled:
            self.device = torch.device("cuda", self.context.local_rank)
        # checked before any file is touched
        amp = amp_settings(cfg.train.amp, cfg.train.amp_dtype, self.device)
        self.use_amp, self.amp_dtype = amp.enabled, amp.dtype
        self.progress = progress and self.context.is_main
        self.checkpoint_dir = self.run_dir / "checkpoints"
        last = self.checkpoint_dir / "last.pt"
        if resume and not last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {last}")
        if not resume and last.exists():
            if not overwrite:
                raise FileExistsError(
                    f"run folder {self.run_dir} already holds checkpoints; pass --resume to continue it, "
                    "--overwrite to start again, or choose another --run-dir"
                )
            if self.context.is_main:
                shutil.rmtree(self.checkpoint_dir)
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        seed_everything(cfg.train.seed)
        self.train_set, self.val_set = build_datasets(cfg)
        self.is_wsss = bool(cfg.model.wsss)
        self.model = build_model(cfg, model_num_classes(cfg, self.train_set)).to(self.device)
        self.criterion = None if self.is_wsss else build_criterion(cfg).to(self.device)
        self.optimizer = build_optimizer(
            self.model,
            cfg.train.optimizer,
            cfg.train.lr,
            cfg.train.momentum,
            cfg.train.weight_decay,
            cfg.train.backbone_lr_mult,
        )
        self.scheduler = build_scheduler(
            self.optimizer, cfg.train.iterations, cfg.train.poly_power, cfg.train.warmup_iters
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp.loss_scaling)
        self.iteration = 0
        self.best_score = -math.inf
        if resume:
            self._restore(load_checkpoint(last))
        self.ddp_model = self._wrap_ddp(self.model)
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        self.writer = self._tensorboard() if self.context.is_main else None

    # -- set-up -----------------------------------------------------------------------------
    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        if not self.context.enabled:
            return model
        if self.device.type == "cuda" and self.cfg.model.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.model = model
        # heads whose auxiliary branches are skipped in some steps (contrast warm-up, RCA schedule)
        unused = self.cfg.model.head in ("contrast", "protoseg_contrast") or self.cfg.model.wsss == "rca"
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=unused
        )

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tb"))

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
    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "best_score": self.best_score,
            "rng": rng_state(),
            "config": config_to_dict(self.cfg),
            "dataset": dataset_meta(self.train_set),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when saved without loss scaling: a scaled run then starts afresh
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best_score = float(state["best_score"])
        set_rng_state(state["rng"])

    def save(self, name: str) -> Path:
        path = self.checkpoint_dir / f"{name}.pt"
        if self.context.is_main:
            save_checkpoint(self._state(), path)
        return path

    # -- logging ----------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if not self.context.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as file:
            file.write(json.dumps(record) + "\n")
        if self.writer is not None:
            prefix = record.get("split", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("iteration",) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["iteration"])

    # -- the loop ---------------------------------------------------------------------------
    def _losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The forward half of a step: the batch to the device, model and criterion under autocast
        (the method's own memory / prototype updates included). Returns the loss terms."""
        images = batch["image"].to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            if self.is_wsss:
                tags = batch["tags"].to(self.device, non_blocking=True)
                return self.ddp_model(images, tags, self.iteration)
            target = batch["mask"].to(self.device, non_blocking=True)
            return self.criterion(self.ddp_model(images, target), target, self.iteration)

    def _step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        terms = self._losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        if self.cfg.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return terms

    def validate(self) -> dict[str, Any]:
        if self.is_wsss:
            return evaluate_cam_seeds(
                self.model,
                self.val_set,
                self.device,
                self.cfg.eval.cam_threshold,
                self.context,
                self.cfg.data.num_workers,
                progress=self.progress,
            )
        return evaluate_segmentation(
            self.model,
            self.val_set,
            self.device,
            self.cfg.eval,
            self.context,
            self.cfg.data.num_workers,
            progress=self.progress,
            window=self.cfg.data.crop_size,
        )

    def _validate_and_checkpoint(self, validate: bool) -> dict[str, Any] | None:
        metrics = None
        if validate:
            metrics = self.validate()
            self._log(
                {
                    "split": "val",
                    "iteration": self.iteration,
                    "mIoU": metrics["mIoU"],
                    "aAcc": metrics["aAcc"],
                    "mAcc": metrics["mAcc"],
                }
            )
            if self.progress:
                tqdm.write(f"[{self.iteration}] val mIoU {metrics['mIoU']:.2f}  aAcc {metrics['aAcc']:.2f}")
            if metrics["mIoU"] > self.best_score:
                self.best_score = metrics["mIoU"]
                self.save("best")
        self.save("last")
        return metrics

    def _refresh_interval(self) -> int:
        if not self.is_wsss or not hasattr(self.model, "refresh"):
            return 0
        interval = self.cfg.model.rca.refresh_interval
        per_epoch = max(1, len(self.train_set) // (self.cfg.train.batch_size * self.context.world_size))
        return interval or per_epoch

    def train(self, until: int | None = None) -> dict[str, Any] | None:
        """Run the schedule to ``train.iterations`` (or stop after iteration ``until``, keeping the
        schedule: an interruption that ``--resume`` continues). Returns the last val metrics."""
        cfg = self.cfg.train
        stop = cfg.iterations if until is None else min(until, cfg.iterations)
        self.model.train()
        loader_iter = iter(self._train_loader())
        refresh_interval = self._refresh_interval()
        running: dict[str, torch.Tensor] = {}
        last_metrics = None
        timer, timed_iters = time.perf_counter(), 0
        bar = tqdm(
            total=cfg.iterations,
            initial=self.iteration,
            disable=not self.progress,
            desc="train",
            dynamic_ncols=True,
        )
        while self.iteration < stop:
            terms = self._step(next(loader_iter))
            self.iteration += 1
            timed_iters += 1
            for key, value in terms.items():
                if isinstance(value, torch.Tensor) and value.dim() == 0:
                    running[key] = running.get(key, 0) + value.detach().float()
            if refresh_interval and self.iteration % refresh_interval == 0:
                self.model.refresh()
            bar.update(1)
            if self.iteration % cfg.log_interval == 0 or self.iteration == cfg.iterations:
                # the only host sync of the loop, once per log interval
                averages = {key: float(value) / timed_iters for key, value in running.items()}
                seconds = time.perf_counter() - timer
                record = {
                    "split": "train",
                    "iteration": self.iteration,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "seconds_per_iter": seconds / timed_iters,
                    **averages,
                }
                self._log(record)
                bar.set_postfix(loss=f"{averages['loss']:.3f}", it_s=f"{timed_iters / seconds:.2f}")
                running, timer, timed_iters = {}, time.perf_counter(), 0
                if not math.isfinite(averages["loss"]):
                    raise FloatingPointError(
                        f"loss is {averages['loss']} at iteration {self.iteration}; "
                        "the last checkpoint is kept intact"
                    )
            finished = self.iteration == cfg.iterations
            validate = (cfg.val_interval > 0 and self.iteration % cfg.val_interval == 0) or finished
            interrupted = self.iteration == stop and not finished
            if (
                validate
                or interrupted
                or (cfg.checkpoint_interval > 0 and self.iteration % cfg.checkpoint_interval == 0)
            ):
                last_metrics = self._validate_and_checkpoint(validate) or last_metrics
        bar.close()
        if self.writer is not None:
            self.writer.close()
        return last_metrics

    def close(self) -> None:
        cleanup(self.context)
