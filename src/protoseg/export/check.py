"""Does an exported file compute what the PyTorch network computes? Run both on the same images."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .graph import ExportError, failure_reason, inference_graph
from .onnx import compare_onnx


def load_exported(path: str | Path, format: str) -> nn.Module:
    """A TorchScript (``torchscript``) or ``torch.export`` (``torch_export``) file as a callable module."""
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)  # torch's deprecation of TorchScript
            return torch.jit.load(str(path), map_location="cpu")
    if format == "torch_export":
        return torch.export.load(str(path)).module()
    raise ExportError(f"load_exported reads torchscript or torch_export files, not '{format}'")


@torch.no_grad()
def compare_exported(
    path: str | Path, format: str, network: nn.Module, images: torch.Tensor
) -> dict[str, Any]:
    """``{"max_abs_diff", "labels_equal", "shape"}`` of the exported file against ``network`` on
    ``images`` ``(B, 3, H, W)`` (CPU; ONNX files run in onnxruntime)."""
    if format == "onnx":
        return compare_onnx(path, network, images)
    expected = inference_graph(network)(images).cpu()
    try:
        actual = load_exported(path, format)(images.cpu()).cpu()
    except Exception as error:
        raise ExportError(
            f"the {format} file {path} cannot run input {tuple(images.shape)}: {failure_reason(error)}"
        ) from None
    if actual.shape != expected.shape:
        raise ExportError(
            f"{path} returns shape {tuple(actual.shape)} for input {tuple(images.shape)}, PyTorch "
            f"{tuple(expected.shape)}: the trace fixed the sizes of its example"
        )
    return {
        "max_abs_diff": float((actual - expected).abs().max()),
        "labels_equal": bool(torch.equal(actual.argmax(1), expected.argmax(1))),
        "shape": list(actual.shape),
    }
