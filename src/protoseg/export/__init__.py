"""Export a trained network for inference outside protoseg: ONNX, TorchScript, ``torch.export``.

    from protoseg.export import export_model
    result = export_model(method.network, "model.onnx", example)   # example: (B, 3, H, W) normalised

What the exported file computes is the network's :func:`inference_graph` (logits at the input size for
segmentors, raw foreground CAMs for CAM networks); ``protoseg export`` is the command line of the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .graph import CamScores, ExportError, SegmentorLogits, inference_graph
from .onnx import DEFAULT_OPSET, EXPORTERS, ExportResult, compare_onnx, export_onnx, onnx_session, run_onnx
from .torch_formats import export_program, export_torchscript

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "torch_export": ".pt2"}
"""Export formats and their file suffixes."""


def export_model(
    network: nn.Module,
    path: str | Path,
    example: torch.Tensor,
    format: str = "onnx",
    *,
    dynamic: bool = True,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    metadata: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Write ``network``'s inference graph to ``path`` in ``format`` (one of :data:`FORMATS`).

    ``example`` is a normalised ``(B, 3, H, W)`` input on the network's device; ``dynamic``, ``opset``,
    ``exporter`` and ``metadata`` as in :func:`export_onnx` (``opset`` / ``exporter`` / ``metadata``
    only apply to ONNX, ``dynamic`` not to TorchScript, which is a trace).
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format '{format}' (valid: {', '.join(FORMATS)})")
    if format == "onnx":
        return export_onnx(
            network, path, example, opset=opset, dynamic=dynamic, exporter=exporter, metadata=metadata
        )
    if format == "torchscript":
        return export_torchscript(network, path, example)
    return export_program(network, path, example, dynamic=dynamic)


__all__ = [
    "DEFAULT_OPSET",
    "EXPORTERS",
    "FORMATS",
    "CamScores",
    "ExportError",
    "ExportResult",
    "SegmentorLogits",
    "compare_onnx",
    "export_model",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "inference_graph",
    "onnx_session",
    "run_onnx",
]
