"""What an exported file needs to be used without protoseg: the preprocessing and the classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def run_metadata(cfg: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-able facts of a run for an exported file's metadata: the method, the input normalisation
    (``mean`` / ``std`` of ``cfg.data``), the classes, their palette, and the protoseg version.

    ``meta`` is a checkpoint's dataset metadata (``num_classes``, ``class_names``, ``palette``,
    ``has_background``)."""
    from protoseg import __version__

    return {
        "protoseg_version": __version__,
        "method": cfg.model.method,
        "input": "images (B, 3, H, W) float32: RGB in [0, 1], minus mean, divided by std (per channel)",
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
        "num_classes": int(meta["num_classes"]),
        "class_names": list(meta["class_names"]),
        "palette": [list(colour) for colour in meta["palette"]],
        "has_background": bool(meta.get("has_background", False)),
    }
