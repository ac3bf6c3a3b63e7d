"""TorchScript and ``torch.export`` files of a network's inference graph (no ONNX runtime needed).

- ``torchscript`` (``.pt``, ``torch.jit.load``): a trace. torch marks TorchScript as deprecated; the
  trace keeps the shapes dynamic only where the network computes them with tensor ops, so check
  other sizes (``protoseg export --check``) before relying on them.
- ``torch_export`` (``.pt2``, ``torch.export.load(path).module()``): the ``torch.export`` program,
  dynamic batch / height / width where the architecture allows it.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
from torch import nn

from .graph import INPUT_NAME, ExportError, failure_reason, inference_graph
from .onnx import DYNAMIC_AXES, ExportResult


def _output_shape(graph: nn.Module, example: torch.Tensor, input_shape: list[int | str]) -> list[int | str]:
    """The output's shape, the dynamic input axes named as in the input (feature-resolution axes of a
    CAM network: ``feature_height`` / ``feature_width``)."""
    with torch.no_grad():
        shape: list[int | str] = list(graph(example).shape)
    for axis, name in DYNAMIC_AXES.items():
        if isinstance(input_shape[axis], str):
            shape[axis] = name if axis == 0 or shape[axis] == example.shape[axis] else f"feature_{name}"
    return shape


def export_torchscript(network: nn.Module, path: str | Path, example: torch.Tensor) -> ExportResult:
    """Trace ``network``'s inference graph on ``example`` ``(B, 3, H, W)`` and save it to ``path``."""
    graph = inference_graph(network)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)  # torch's deprecation of TorchScript
            traced = torch.jit.trace(graph, (example,), check_trace=False)
        traced.save(str(path))
    except Exception as error:
        raise ExportError(
            f"TorchScript trace of {type(graph.network).__name__} failed: {failure_reason(error)}; "
            "use the torch_export or onnx format"
        ) from error
    shape: list[int | str] = ["batch", 3, "height", "width"]
    return ExportResult(
        path=path,
        format="torchscript",
        input_name=INPUT_NAME,
        output_name=graph.output_name,
        input_shape=shape,
        output_shape=_output_shape(graph, example, shape),
        seconds=time.perf_counter() - start,
        notes=["a trace: sizes other than the example's are as dynamic as the network's shape code"],
    )


def _export_and_save(graph: nn.Module, path: Path, example: torch.Tensor, dynamic: bool):
    dims = torch.export.Dim
    flexible = getattr(dims, "DYNAMIC", None) or getattr(dims, "AUTO", None)
    shapes = None
    if dynamic:
        shapes = {INPUT_NAME: {axis: flexible or dims(name) for axis, name in DYNAMIC_AXES.items()}}
    with torch.no_grad():
        program = torch.export.export(graph, (example,), dynamic_shapes=shapes, strict=False)
    torch.export.save(program, str(path))
    return program


def export_program(
    network: nn.Module, path: str | Path, example: torch.Tensor, dynamic: bool = True
) -> ExportResult:
    """``torch.export`` ``network``'s inference graph on ``example`` and save the program to ``path``.

    With ``dynamic``, a program whose dynamic sizes cannot be exported or saved (e.g. timm's "same"
    padding computes ``math.ceil`` of the size, which ``torch.export.save`` cannot serialise) is
    exported for the example's sizes instead, and the result's ``notes`` say why.
    """
    graph = inference_graph(network)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    notes = []
    start = time.perf_counter()
    try:
        try:
            program = _export_and_save(graph, path, example, dynamic)
        except Exception as error:
            if not dynamic:
                raise
            program = _export_and_save(graph, path, example, False)
            notes.append(f"exported for the example's sizes: dynamic sizes failed ({failure_reason(error)})")
    except Exception as error:
        raise ExportError(
            f"torch.export of {type(graph.network).__name__} failed: {failure_reason(error)}"
        ) from error
    placeholder = next(
        node for node in program.graph.nodes if node.op == "placeholder" and node.name == INPUT_NAME
    )
    sizes = placeholder.meta["val"].shape
    input_shape: list[int | str] = [
        int(size) if isinstance(size, int) else DYNAMIC_AXES.get(axis, str(size))
        for axis, size in enumerate(sizes)
    ]
    return ExportResult(
        path=path,
        format="torch_export",
        input_name=INPUT_NAME,
        output_name=graph.output_name,
        input_shape=input_shape,
        output_shape=_output_shape(graph, example, input_shape),
        seconds=time.perf_counter() - start,
        notes=notes,
    )
