"""A run folder: ``config.yaml``, ``checkpoints/{last,best}.pt``, ``metrics.jsonl``, ``tb/``, ``viz/``.

One trainer at a time: :meth:`RunFolder.prepare` takes an exclusive lock (``.lock``, an ``flock``
the system releases when the process ends, also by ``kill -9``), and only then cleans what an earlier
process left: the hidden temporary files of interrupted atomic writes and, on resume, the log records
written after the checkpoint it resumes from.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..config import Config, save_config
from ..files import append_line, atomic_write_text, remove_stale_temporaries

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class RunFolderBusy(FileExistsError):
    """Another process trains into the run folder."""


class RunFolder:
    """The files of one training run. Only the main process writes (``writer=True``)."""

    def __init__(self, path: str | Path, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer
        self._lock_handle: Any = None
        self._created = False

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

    @property
    def viz(self) -> Path:
        return self.path / "viz"

    # -- the lock -----------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the folder's exclusive lock (creating the folder); ``RunFolderBusy`` naming the holder's
        process id when another process has it."""
        if not self.writer or self._lock_handle is not None:
            return
        self._created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the run's lifetime
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise RunFolderBusy(
                    f"run folder {self.path} is in use by another protoseg train (process {holder}); "
                    "wait for it to end or choose another --run-dir"
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_handle = handle

    def unlock(self, failed: bool = False) -> None:
        """Release the lock; after a failure, remove the folder again if this process created it and
        nothing but the lock was written."""
        if self._lock_handle is None:
            return
        self._lock_handle.close()
        self._lock_handle = None
        lock_path = self.path / LOCK_NAME
        if failed and self._created and [p.name for p in self.path.iterdir()] == [LOCK_NAME]:
            lock_path.unlink(missing_ok=True)
            self.path.rmdir()

    # -- preparing -----------------------------------------------------------------------------
    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Lock the folder and check it fits the request: ``resume`` needs ``last.pt``; a folder with
        checkpoints is only started again with ``overwrite`` (then its checkpoints, metrics,
        TensorBoard events and pictures are removed). A fresh start in a folder without checkpoints
        starts a fresh log. Temporary files of interrupted writes are deleted."""
        self.lock()
        try:
            if resume and not self.last.is_file():
                raise FileNotFoundError(f"--resume: no checkpoint at {self.last}")
            if not resume and self.last.exists() and not overwrite:
                raise FileExistsError(
                    f"run folder {self.path} already holds checkpoints; pass --resume to continue it, "
                    "--overwrite to start again, or choose another --run-dir"
                )
        except BaseException:
            self.unlock(failed=True)
            raise
        if not self.writer:
            return
        for folder in (self.path, self.checkpoints):
            remove_stale_temporaries(folder)
        if not resume:
            cleared = (self.checkpoints, self.tensorboard, self.viz) if overwrite else (self.tensorboard,)
            for folder in cleared:
                shutil.rmtree(folder, ignore_errors=True)
            self.metrics.unlink(missing_ok=True)

    def save_config(self, cfg: Config) -> None:
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.config)

    def keep_config(self, iteration: int) -> Path | None:
        """Copy ``config.yaml`` to ``config.until_<iteration>.yaml`` (before a resume with another
        config replaces it); returns the copy."""
        if not self.writer or not self.config.is_file():
            return None
        copy = self.path / f"config.until_{iteration}.yaml"
        atomic_write_text(copy, self.config.read_text())
        return copy

    # -- the training log ----------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
            append_line(self.metrics, json.dumps(record))

    def metric_records(self) -> list[dict[str, Any]]:
        """The readable records of ``metrics.jsonl`` (a half-written last line is skipped)."""
        if not self.metrics.is_file():
            return []
        records = []
        for line in self.metrics.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("iteration"), int):
                records.append(record)
        return records

    def truncate_metrics(self, iteration: int) -> int:
        """Drop the records after ``iteration`` (written after the checkpoint a resumed run continues
        from, so the resumed run writes them again); returns how many were dropped."""
        if not self.writer or not self.metrics.is_file():
            return 0
        lines = self.metrics.read_text(errors="replace").splitlines()
        kept = [json.dumps(record) for record in self.metric_records() if record["iteration"] <= iteration]
        if len(kept) != len(lines):
            atomic_write_text(self.metrics, "".join(line + "\n" for line in kept))
        return len(lines) - len(kept)
