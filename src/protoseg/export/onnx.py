"""ONNX export of a network's :func:`~protoseg.export.graph.inference_graph`, and its check in onnxruntime.

The ONNX file takes ``images`` ``(B, 3, H, W)`` float32, normalised with the run's mean / std, and
returns ``logits`` ``(B, C, H, W)`` (segmentors) or ``cams`` ``(B, C, h, w)`` (CAM networks). Batch,
height and width are dynamic where the architecture allows it: the axes the exporter had to fix
(e.g. a backbone whose positional embedding has one size) are reported in :class:`ExportResult`.
The run's preprocessing and classes travel in the file's ``metadata_props`` (JSON values).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .graph import INPUT_NAME, ExportError, failure_reason, inference_graph

DEFAULT_OPSET = 18
"""Opset 18: the lowest the ``torch.export``-based exporter emits, run by every onnxruntime since 1.14
(current onnxruntime runs up to opset 23), so one file serves old and new runtimes alike."""

EXPORTERS = ("dynamo", "torchscript")
"""``dynamo``: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript; needs the
``onnxscript`` package); ``torchscript``: torch's legacy tracing exporter (deprecated by torch)."""

DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}
EXTERNAL_DATA_BYTES = 1536 * 2**20  # larger models keep their weights in PATH.data (protobuf's 2 GiB limit)


@dataclass
class ExportResult:
    """What an export wrote: ``path``, ``format``, the input / output names and their shapes (a name
    for each dynamic axis, a number for each fixed one), the seconds the export took and the opset /
    exporter for ONNX files."""

    path: Path
    format: str
    input_name: str
    output_name: str
    input_shape: list[int | str]
    output_shape: list[int | str]
    seconds: float
    opset: int | None = None
    exporter: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


def _require(module: str, purpose: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(
            f"{purpose} needs the package '{module}': pip install 'protoseg[onnx]' "
            "(onnx, onnxruntime, onnxscript)"
        ) from None


def _parameter_bytes(module: nn.Module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def _shape(value_info) -> list[int | str]:
    return [dim.dim_param or dim.dim_value for dim in value_info.type.tensor_type.shape.dim]


def _dynamo_export(graph: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    _require("onnxscript", "the dynamo ONNX exporter")
    dims = torch.export.Dim
    # DYNAMIC: an axis the network needs fixed becomes fixed (and is reported), instead of failing
    flexible = getattr(dims, "DYNAMIC", None) or getattr(dims, "AUTO", None)
    shapes = None
    if dynamic:
        shapes = {INPUT_NAME: {axis: flexible or dims(name) for axis, name in DYNAMIC_AXES.items()}}
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[graph.output_name],
            dynamic_shapes=shapes,
            external_data=_parameter_bytes(graph) > EXTERNAL_DATA_BYTES,
            verbose=False,
        )


def _torchscript_export(
    graph: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool
) -> None:
    axes = {INPUT_NAME: DYNAMIC_AXES, graph.output_name: DYNAMIC_AXES} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)  # the exporter's own deprecation notice
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[graph.output_name],
            dynamic_axes=axes,
        )


def _rename_dynamic_axes(model, names: Mapping[int, str]) -> None:
    """Name the input's and output's dynamic axes ``batch`` / ``height`` / ``width`` (the dynamo
    exporter names them ``s0``, ``s1``, ...); other dynamic output axes (a CAM network's feature
    resolution, e.g. ``((s1 - 1)//16) + 1``) become ``feature_height`` / ``feature_width``."""
    inputs = model.graph.input[0].type.tensor_type.shape.dim
    renamed = {inputs[axis].dim_param: name for axis, name in names.items() if inputs[axis].dim_param}
    for value in list(model.graph.input) + list(model.graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param in renamed:
                dim.dim_param = renamed[dim.dim_param]
            elif dim.dim_param and axis in (2, 3):
                dim.dim_param = f"feature_{names[axis]}"


def export_onnx(
    network: nn.Module,
    path: str | Path,
    example: torch.Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    exporter: str = "dynamo",
    metadata: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Write ``network``'s inference graph to ``path`` as ONNX.

    Args:
        network: a method's network (or the method): a Segmentor or a CAM network (see
            :func:`~protoseg.export.graph.inference_graph`); it is put in eval mode.
        example: a normalised ``(B, 3, H, W)`` input on the network's device (B >= 2 lets the exporter
            see that the batch axis varies).
        opset: ONNX opset (>= 18 for the dynamo exporter).
        dynamic: dynamic batch / height / width where the architecture allows it; False fixes all
            three to the example's.
        exporter: one of :data:`EXPORTERS`.
        metadata: stored in the file's ``metadata_props`` (values JSON-encoded).

    Raises ``ExportError`` naming what could not be exported and why.
    """
    onnx = _require("onnx", "ONNX export")
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown ONNX exporter '{exporter}' (valid: {', '.join(EXPORTERS)})")
    if exporter == "dynamo" and opset < DEFAULT_OPSET:
        raise ExportError(f"the dynamo ONNX exporter needs opset >= {DEFAULT_OPSET}, got {opset}")
    if example.dim() != 4 or example.shape[1] != 3:
        raise ExportError(f"the example input must be (B, 3, H, W), got shape {tuple(example.shape)}")
    graph = inference_graph(network)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            (_dynamo_export if exporter == "dynamo" else _torchscript_export)(
                graph, example, path, opset, dynamic
            )
    except ExportError:
        raise
    except Exception as error:  # the exporters raise many types
        raise ExportError(
            f"ONNX export ({exporter} exporter, opset {opset}) of {type(graph.network).__name__} failed: "
            f"{failure_reason(error)}"
            + ("; try dynamic=False (--static) or exporter='torchscript'" if dynamic else "")
        ) from error
    seconds = time.perf_counter() - start
    model = onnx.load(str(path), load_external_data=False)
    if dynamic:
        _rename_dynamic_axes(model, DYNAMIC_AXES)
    if metadata:
        onnx.helper.set_model_props(model, {key: json.dumps(value) for key, value in metadata.items()})
    onnx.save(model, str(path))
    input_shape, output_shape = _shape(model.graph.input[0]), _shape(model.graph.output[0])
    notes = []
    fixed = [name for axis, name in DYNAMIC_AXES.items() if isinstance(input_shape[axis], int)]
    if dynamic and fixed:
        notes.append(
            f"the {' and '.join(fixed)} axes are fixed to the example's: {type(graph.network).__name__} "
            "specialises on them (e.g. a fixed-size positional embedding or padding computed in Python)"
        )
    return ExportResult(
        path=path,
        format="onnx",
        input_name=INPUT_NAME,
        output_name=graph.output_name,
        input_shape=input_shape,
        output_shape=output_shape,
        seconds=seconds,
        opset=opset,
        exporter=exporter,
        notes=notes,
    )


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU ``InferenceSession`` of ``path`` (``threads``: intra-op threads)."""
    ort = _require("onnxruntime", "running an ONNX file")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: torch.Tensor) -> torch.Tensor:
    """The ONNX model's output for ``images`` ``(B, 3, H, W)`` as a CPU tensor."""
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: images.detach().float().cpu().numpy()})[0])


@torch.no_grad()
def compare_onnx(path: str | Path, network: nn.Module, images: torch.Tensor) -> dict[str, Any]:
    """Run ``path`` in onnxruntime (CPU) and ``network``'s inference graph in PyTorch on ``images``:
    ``{"max_abs_diff": float, "labels_equal": bool (argmax over the classes), "shape": [...]}``."""
    graph = inference_graph(network)
    expected = graph(images).cpu()
    try:
        actual = run_onnx(onnx_session(path), images)
    except Exception as error:  # onnxruntime's own exception types
        raise ExportError(
            f"onnxruntime cannot run {path} on input {tuple(images.shape)}: {failure_reason(error)}"
        ) from None
    if actual.shape != expected.shape:
        raise ExportError(
            f"{path} returns shape {tuple(actual.shape)} for input {tuple(images.shape)}, PyTorch "
            f"{tuple(expected.shape)}: the file was exported for other sizes"
        )
    return {
        "max_abs_diff": float((actual - expected).abs().max()),
        "labels_equal": bool(torch.equal(actual.argmax(1), expected.argmax(1))),
        "shape": list(actual.shape),
    }
