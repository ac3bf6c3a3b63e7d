"""What an exported file computes: a trained network as one ``images -> tensor`` function.

An exporter (ONNX, TorchScript, ``torch.export``) traces a module with one tensor input and one
tensor output; :func:`inference_graph` wraps a network into such a module:

- a :class:`~protoseg.models.Segmentor` (the linear, ProtoSeg, ContrastiveSeg and ProtoSeg + contrast
  methods) -> :class:`SegmentorLogits`: ``images (B, 3, H, W) -> logits (B, C, H, W)`` at the input
  size, what ``Segmentor.predict`` returns (softmax / argmax are left to the caller). The ProtoSeg
  head's inference is already one matmul ``(N, D) x (D, C*K)`` and one max over K, and exports as
  such (``MatMul`` + ``ReduceMax``);
- a CAM network (``cams(images)``: the CAM baseline, PPC, RCA) -> :class:`CamScores`:
  ``images (B, 3, H, W) -> cams (B, C, h, w)``, the raw foreground CAMs at feature resolution.

Anything else is an :class:`ExportError` that says what an exportable network looks like.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ..models.segmentor import Segmentor

INPUT_NAME = "images"


class ExportError(ValueError):
    """A network or an option that cannot be exported; the message says why and what to do."""


class SegmentorLogits(nn.Module):
    """``images (B, 3, H, W)`` normalised -> float32 logits ``(B, C, H, W)`` at the input size."""

    output_name = "logits"

    def __init__(self, network: Segmentor) -> None:
        super().__init__()
        self.network = network
        self.num_outputs = network.num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.network(images)["logits"].float()
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


class CamScores(nn.Module):
    """``images (B, 3, H, W)`` normalised -> raw foreground CAMs ``(B, C, h, w)`` (before ReLU and
    normalisation, at the network's feature resolution), what ``network.cams`` returns."""

    output_name = "cams"

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.num_outputs = int(network.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.cams(images).float()


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def failure_reason(error: BaseException) -> str:
    """``"Type: first line"`` of an exporter's error, and of the error that caused it (the exporters
    wrap the real cause, e.g. a data-dependent branch, in a generic "failed to export")."""

    def line(exception: BaseException) -> str:
        text = ANSI_ESCAPE.sub("", str(exception)).strip()
        return f"{type(exception).__name__}: {text.splitlines()[0] if text else '(no message)'}"

    root = error
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    return line(error) if root is error else f"{line(error)} (cause: {line(root)})"


def inference_graph(network: nn.Module) -> SegmentorLogits | CamScores:
    """The exportable ``images -> tensor`` module of ``network`` (a method's ``network``, or a method
    itself), in eval mode. ``ExportError`` for any other module."""
    network = getattr(network, "network", network)
    if isinstance(network, Segmentor):
        graph: SegmentorLogits | CamScores = SegmentorLogits(network)
    elif callable(getattr(network, "cams", None)) and hasattr(network, "num_classes"):
        graph = CamScores(network)
    else:
        raise ExportError(
            f"cannot export a {type(network).__name__}: protoseg exports a Segmentor (backbone, decoder, "
            "head; its logits) or a CAM network with cams(images) (its CAMs); wrap other modules yourself "
            "and call torch.onnx.export on them"
        )
    return graph.eval()
