"""``protoseg export``: a trained run's network as an ONNX, TorchScript or ``torch.export`` file.

    protoseg export RUN_DIR [--format onnx] [--out RUN_DIR/export/model.onnx] [--check]

The file takes ``images`` ``(B, 3, H, W)`` normalised with the run's ``data.mean`` / ``data.std`` and
returns ``logits`` ``(B, C, H, W)`` (segmentors) or raw foreground ``cams`` ``(B, C, h, w)`` (CAM
networks); ONNX files carry the preprocessing and the classes in their ``metadata_props``. ``--check``
runs the file (onnxruntime for ONNX) and the PyTorch network on the same random images, at the
export size and, for dynamic files, at another batch and size, and prints the largest difference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from . import DEFAULT_OPSET, EXPORTERS, FORMATS, ExportError, export_model
from .check import compare_exported
from .metadata import run_metadata


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT")
    parser.add_argument("--checkpoint", help="default: RUN_DIR/checkpoints/best.pt, else last.pt")
    parser.add_argument("--format", default="onnx", choices=list(FORMATS))
    parser.add_argument("--out", help="default: RUN_DIR/export/model.<suffix of the format>")
    parser.add_argument(
        "--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), help="default: data.crop_size"
    )
    parser.add_argument("--batch", type=int, default=2, help="batch of the example input (default 2)")
    parser.add_argument("--static", action="store_true", help="fix batch and image size to the example's")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument("--exporter", default="dynamo", choices=list(EXPORTERS), help="ONNX exporter")
    parser.add_argument("--check", action="store_true", help="compare the file with PyTorch on random images")
    parser.add_argument("--device", default="cpu", help="device to trace on (default cpu)")


def _checkpoint(source: Path, checkpoint: str | None) -> Path:
    from ..engine.loading import find_checkpoint

    if checkpoint:
        return Path(checkpoint)
    if source.is_dir():
        return find_checkpoint(source)
    if source.is_file():
        return source
    raise FileNotFoundError(f"protoseg export: no run folder or checkpoint file {source}")


def check_shapes(example: torch.Tensor, dynamic: bool) -> list[tuple[int, int, int]]:
    """(batch, height, width) to check a file on: the example's, and for dynamic files another one."""
    batch, _, height, width = example.shape
    shapes = [(batch, height, width)]
    if dynamic:
        shapes.append((batch + 1, height + 32, max(8, width - 16)))
    return shapes


def run(args: argparse.Namespace) -> int:
    from ..engine.device import resolve_device
    from ..engine.loading import load_trained_method

    source = Path(args.source)
    checkpoint = _checkpoint(source, args.checkpoint)
    device = resolve_device(args.device)
    method, cfg, meta = load_trained_method(checkpoint, device)
    height, width = args.size or cfg.data.crop_size
    if args.batch < 1 or height < 1 or width < 1:
        raise ExportError(f"--batch and --size must be >= 1, got {args.batch} and {height} x {width}")
    out = (
        Path(args.out)
        if args.out
        else ((source if source.is_dir() else checkpoint.parent) / "export" / f"model{FORMATS[args.format]}")
    )
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(args.batch, 3, height, width, generator=generator).to(device)
    metadata = run_metadata(cfg, meta)
    result = export_model(
        method.network,
        out,
        example,
        args.format,
        dynamic=not args.static,
        opset=args.opset,
        exporter=args.exporter,
        metadata=metadata,
    )
    summary = {**result.to_dict(), "checkpoint": str(checkpoint)}
    if args.check:
        checks = []
        for batch, check_height, check_width in check_shapes(example, not args.static):
            images = torch.randn(batch, 3, check_height, check_width, generator=generator)
            checks.append(
                {"input": [batch, 3, check_height, check_width]}
                | compare_exported(out, args.format, method.network.cpu(), images)
            )
        summary["checks"] = checks
    print(json.dumps(summary, indent=2))
    return 0
