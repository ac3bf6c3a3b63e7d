"""protoseg: prototype-based semantic segmentation (ProtoSeg, ContrastiveSeg, PPC, RCA).

The public API (``docs/api.md``)::

    import protoseg
    model = protoseg.load("runs/demo")          # a trained run folder or checkpoint
    labels = model.predict("image.jpg")          # (H, W) class indices
    model = protoseg.create_model("protoseg", num_classes=21, backbone="resnet50")

The heads, losses and inference settings are importable from here too (``protoseg.ProtoSegHead``,
``protoseg.ProtoSegLoss``, ...) and work on any backbone's features. Names are imported on first use,
so ``import protoseg`` stays cheap (the ``protoseg`` command sets process defaults before torch loads).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "protoseg.api",
    "create_model": "protoseg.api",
    "list_methods": "protoseg.api",
    "Model": "protoseg.api",
    "TTA_SCALES": "protoseg.api",
    "InferenceSettings": "protoseg.ops.inference",
    "predict_probabilities": "protoseg.ops.inference",
    "Segmentor": "protoseg.models.segmentor",
    "LinearHead": "protoseg.models.heads",
    "ProtoSegHead": "protoseg.models.heads",
    "ContrastHead": "protoseg.models.heads",
    "ProtoSegContrastHead": "protoseg.models.heads",
    "PrototypeBank": "protoseg.prototypes.bank",
    "ProtoSegLoss": "protoseg.losses",
    "ContrastSegLoss": "protoseg.losses",
    "PixelContrastLoss": "protoseg.losses",
    "SegmentationCELoss": "protoseg.losses",
}
"""Public name -> the module that defines it (imported lazily, PEP 562)."""

_SUBMODULES = ("api", "export", "integrations")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"protoseg.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'protoseg' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["__version__", *_EXPORTS]
