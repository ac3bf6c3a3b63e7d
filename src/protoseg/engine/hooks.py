"""What happens around the training step, as hooks (after detectron2's ``HookBase``): the method's
periodic refresh, logging, checkpoints and validation. The trainer calls, in list order,
``before_train()`` once, ``after_step()`` after every iteration (``trainer.iteration`` already counts
it) and ``after_train()`` once, also when the loop ends by an exception."""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from .distributed import any_rank

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


class HookBase:
    """A hook sees the trainer (``self.trainer``) and may act before, during and after training."""

    trainer: Trainer

    def before_train(self) -> None:
        """Once, before the first iteration of this ``train()`` call."""

    def after_step(self) -> None:
        """After every iteration."""

    def after_train(self) -> None:
        """Once, after the last iteration (or when training stops on an error)."""


class PeriodicRefresh(HookBase):
    """Call ``refresh()`` every ``interval`` iterations (RCA's k-means of its memory)."""

    def __init__(self, refresh, interval: int) -> None:
        self.refresh = refresh
        self.interval = interval

    def after_step(self) -> None:
        if self.interval > 0 and self.trainer.iteration % self.interval == 0:
            self.refresh()


class ProgressReporter:
    """A progress bar on a terminal; plain lines (one per log interval and validation) otherwise, or
    when ``bar`` is False (``--no-progress``). Silent on ranks other than the main one."""

    def __init__(self, enabled: bool, bar: bool, total: int, initial: int) -> None:
        self.enabled = enabled
        self.bar = (
            tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)
            if enabled and bar and sys.stdout.isatty()
            else None
        )

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def report(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.bar is not None and record.get("split") == "train":
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", it_s=f"{1 / record['seconds_per_iter']:.2f}")
            return
        text = format_record(record)
        if self.bar is not None:
            tqdm.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_record(record: dict[str, Any]) -> str:
    """One log line: ``[iteration/total] train loss 0.512 ce 0.500 ... lr 0.0100 3.21 it/s`` or
    ``[iteration] val mIoU 45.12 aAcc 90.10 mAcc 55.00``."""
    iteration = record["iteration"]
    if record.get("split") == "val":
        scores = "  ".join(f"{key} {record[key]:.2f}" for key in ("mIoU", "aAcc", "mAcc"))
        return f"[{iteration}] val {scores}"
    skip = {"split", "iteration", "lr", "seconds_per_iter", "total"}
    terms = "  ".join(f"{key} {value:.4g}" for key, value in record.items() if key not in skip)
    total = record.get("total")
    where = f"{iteration}/{total}" if total else f"{iteration}"
    return f"[{where}] train {terms}  lr {record['lr']:.3g}  {1 / record['seconds_per_iter']:.2f} it/s"


class MetricsLogger(HookBase):
    """Average the step's scalar terms over each ``log_interval`` and write them to ``metrics.jsonl``,
    TensorBoard and the progress display. Reading the averages is the loop's only host synchronisation.
    A non-finite average loss stops training with ``FloatingPointError`` (the last checkpoint is kept)."""

    def __init__(self, log_interval: int, reporter: ProgressReporter, tensorboard=None) -> None:
        self.log_interval = log_interval
        self.reporter = reporter
        self.tensorboard = tensorboard
        self.running: dict[str, torch.Tensor] = {}
        self.timer = time.perf_counter()
        self.count = 0

    def before_train(self) -> None:
        self.running, self.timer, self.count = {}, time.perf_counter(), 0

    def after_step(self) -> None:
        trainer = self.trainer
        for key, value in trainer.last_terms.items():
            if isinstance(value, torch.Tensor) and value.dim() == 0:
                self.running[key] = self.running.get(key, 0) + value.detach().float()
        self.count += 1
        self.reporter.step()
        if trainer.iteration % self.log_interval and trainer.iteration != trainer.max_iterations:
            return
        averages = {key: float(value) / self.count for key, value in self.running.items()}
        seconds = time.perf_counter() - self.timer
        record = {
            "split": "train",
            "iteration": trainer.iteration,
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "seconds_per_iter": seconds / self.count,
            **averages,
        }
        self.log(record)
        self.running, self.timer, self.count = {}, time.perf_counter(), 0
        if not math.isfinite(averages["loss"]):
            raise FloatingPointError(
                f"loss is {averages['loss']} at iteration {trainer.iteration}; "
                "the last checkpoint is kept intact"
            )

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (train or val) everywhere."""
        self.trainer.run.append_metrics(record)
        self.reporter.report({**record, "total": self.trainer.max_iterations})
        if self.tensorboard is not None:
            prefix = record.get("split", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "iteration" and math.isfinite(value):
                    self.tensorboard.add_scalar(f"{prefix}/{key}", value, record["iteration"])

    def after_train(self) -> None:
        self.reporter.close()
        if self.tensorboard is not None:
            self.tensorboard.flush()


class Checkpointer(HookBase):
    """Save ``last.pt`` every ``interval`` iterations, before every validation, at the end of the
    schedule and when ``train(until=...)`` stops early."""

    def __init__(self, interval: int, validation_interval: int) -> None:
        self.interval = interval
        self.validation_interval = validation_interval

    def after_step(self) -> None:
        trainer = self.trainer
        iteration = trainer.iteration
        due = (
            (self.interval > 0 and iteration % self.interval == 0)
            or (self.validation_interval > 0 and iteration % self.validation_interval == 0)
            or iteration in (trainer.max_iterations, trainer.stop_iteration)
        )
        if due:
            trainer.save("last")


class Validator(HookBase):
    """Validate every ``interval`` iterations and at the end of the schedule (after the checkpoint); log
    the metrics; keep the best model as ``best.pt``. A resumed run first makes up a validation that was
    due at its checkpoint's iteration but did not finish (the process ended during it)."""

    def __init__(self, interval: int, logger: MetricsLogger) -> None:
        self.interval = interval
        self.logger = logger
        self.checked_pending = False

    def due(self, iteration: int) -> bool:
        return (
            self.interval > 0 and iteration % self.interval == 0
        ) or iteration == self.trainer.max_iterations

    def before_train(self) -> None:
        trainer = self.trainer
        if self.checked_pending or not getattr(trainer, "resumed", False):
            return
        self.checked_pending = True
        iteration = trainer.iteration
        pending = (
            trainer.context.is_main
            and iteration > 0
            and self.due(iteration)
            and not any(
                record.get("split") == "val" and record["iteration"] == iteration
                for record in trainer.run.metric_records()
            )
        )
        if any_rank(pending, trainer.context):
            self.validate()

    def after_step(self) -> None:
        if self.due(self.trainer.iteration):
            self.validate()

    def validate(self) -> None:
        trainer = self.trainer
        iteration = trainer.iteration
        metrics = trainer.validate()
        trainer.last_metrics = metrics
        self.logger.log(
            {
                "split": "val",
                "iteration": iteration,
                "mIoU": metrics["mIoU"],
                "aAcc": metrics["aAcc"],
                "mAcc": metrics["mAcc"],
            }
        )
        if metrics["mIoU"] > trainer.best_score:
            trainer.best_score = metrics["mIoU"]
            trainer.save("best")
            trainer.save("last")  # its best score is part of what a resumed run continues from
