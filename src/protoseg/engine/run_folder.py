"""A run folder: ``config.yaml``, ``checkpoints/{last,best}.pt``, ``metrics.jsonl``, ``tb/``, ``viz/``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..config import Config, save_config


class RunFolder:
    """The files of one training run. Only the main process writes (``writer=True``)."""

    def __init__(self, path: str | Path, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Check the folder fits the request: ``resume`` needs ``last.pt``; a folder with checkpoints is
        only started again with ``overwrite`` (then its checkpoints, metrics, TensorBoard events and
        pictures are removed)."""
        if resume and not self.last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.last}")
        if resume or not self.last.exists():
            return
        if not overwrite:
            raise FileExistsError(
                f"run folder {self.path} already holds checkpoints; pass --resume to continue it, "
                "--overwrite to start again, or choose another --run-dir"
            )
        if self.writer:
            for folder in (self.checkpoints, self.tensorboard, self.path / "viz"):
                shutil.rmtree(folder, ignore_errors=True)
            self.metrics.unlink(missing_ok=True)

    def save_config(self, cfg: Config) -> None:
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.config)

    def append_metrics(self, record: dict[str, Any]) -> None:
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
            with open(self.metrics, "a") as file:
                file.write(json.dumps(record) + "\n")
