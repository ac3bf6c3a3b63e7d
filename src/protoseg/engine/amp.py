"""Mixed precision settings of a training run: autocast on CUDA, at float16 or bfloat16."""

from __future__ import annotations

from dataclasses import dataclass

import torch

AMP_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class AmpSettings:
    """``enabled``: run model and criterion under ``torch.autocast``; ``dtype``: its compute dtype;
    ``loss_scaling``: use a ``GradScaler`` (float16 only: bfloat16 has float32's exponent range, so
    its gradients do not underflow and the scaler's per-step inf check, a host sync, is not needed)."""

    enabled: bool
    dtype: torch.dtype
    loss_scaling: bool


def amp_settings(amp: bool, amp_dtype: str, device: torch.device) -> AmpSettings:
    """The run's AMP settings from ``train.amp`` / ``train.amp_dtype``: on CUDA devices only (CPU
    autocast is slower than float32 on most CPUs)."""
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"config key 'train.amp_dtype': '{amp_dtype}' is not one of {', '.join(AMP_DTYPES)}")
    enabled = bool(amp) and device.type == "cuda"
    return AmpSettings(enabled, AMP_DTYPES[amp_dtype], enabled and amp_dtype == "float16")
