"""Stopping a training run cleanly on Ctrl-C (SIGINT) or SIGTERM.

While :class:`StopRequest` is installed, the first SIGINT / SIGTERM only sets a flag: the trainer
finishes the iteration it is in (a step is never cut in half), agrees with the other DDP ranks on the
iteration to stop at, saves ``last.pt`` and raises :class:`TrainingInterrupted`. A second signal
interrupts at once (``KeyboardInterrupt``), as a user pressing Ctrl-C twice expects.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal at ``iteration``; ``checkpoint`` holds ``checkpoint_iteration``
    (the same iteration when the stop could save, an earlier one or None otherwise)."""

    def __init__(
        self, iteration: int, checkpoint_iteration: int | None, checkpoint: str, signal_number: int
    ) -> None:
        self.iteration = iteration
        self.checkpoint_iteration = checkpoint_iteration
        self.checkpoint = checkpoint
        self.signal_number = signal_number
        if checkpoint_iteration is None:
            message = f"interrupted at iteration {iteration}, before the first checkpoint; start it again"
        elif checkpoint_iteration == iteration:
            message = f"interrupted at iteration {iteration}; saved {checkpoint}; continue with --resume"
        else:
            message = (
                f"interrupted at iteration {iteration}; {checkpoint} holds iteration "
                f"{checkpoint_iteration}; continue with --resume"
            )
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for Ctrl-C)."""
        return 128 + self.signal_number


class StopRequest:
    """A context manager that turns SIGINT / SIGTERM into a request the loop polls (``signal_number``
    is the first signal received, or 0). Outside the main thread it installs nothing."""

    def __init__(self) -> None:
        self.signal_number = 0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_number != 0

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.signal_number:
            # a second Ctrl-C aborts at once; a repeated SIGTERM does not (a DDP rank can get one from
            # its parent-death signal and one from its supervisor, and must still save)
            if number == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signal_number = number

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for number in HANDLED_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


def ignore_interrupts_in_worker(worker_id: int) -> None:
    """``DataLoader`` ``worker_init_fn``: workers ignore Ctrl-C (the terminal sends it to the whole
    process group), so the main process decides when to stop and its batches keep coming until then."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
