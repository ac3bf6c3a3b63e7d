"""Atomic checkpoint files, loaded with ``weights_only=True``."""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_write


class _RecordingWriter:
    """A file wrapper that remembers the ``OSError`` of a failed write (torch's zip writer replaces it
    by a RuntimeError that no longer says the disk is full)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a crash or a full disk never leaves a truncated checkpoint
    (the previous one stays). A failed write raises ``OSError`` naming ``path``."""

    def write(file: Any) -> None:
        recorder = _RecordingWriter(file)
        try:
            torch.save(state, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise

    atomic_write(path, write)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A protoseg checkpoint's state; ``ValueError`` naming the file when it is not one (truncated, another
    kind of file, or holding objects beyond tensors and plain values, which are never unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"checkpoint {path} is not a PyTorch checkpoint file (truncated, or another kind of file)"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"checkpoint {path} holds objects that protoseg checkpoints never contain; it was not loaded"
        ) from None
    except Exception as error:  # torch raises several types for truncated or foreign files
        reason = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"checkpoint {path} cannot be read ({type(error).__name__}: {reason})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"checkpoint {path} is not a protoseg checkpoint (no 'model' entry)")
    return state


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states, in types ``weights_only`` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
