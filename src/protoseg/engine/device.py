"""The device a command runs on, from a user's choice (``train.device``, ``--device``)."""

from __future__ import annotations

import re

import torch

DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; ``ValueError`` otherwise, or when
    CUDA is asked for and not available."""
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise ValueError(f"unknown device '{name}' (valid: auto, cpu, cuda, cuda:N)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}' was asked for but CUDA is not available (use cpu or auto)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device '{name}': only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device(name)
