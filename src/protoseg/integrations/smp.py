"""A ProtoSeg head on a segmentation_models_pytorch (smp) model's encoder and decoder.

    import segmentation_models_pytorch as smp
    from protoseg.integrations.smp import protoseg_segmentor

    base = smp.Unet("resnet34", encoder_weights="imagenet", classes=21)
    network = protoseg_segmentor(base, num_classes=21, num_prototypes=10)   # a protoseg Segmentor
    outputs = network(images, target=masks)          # training: logits + prototype logits / targets
    ProtoSegLoss()(outputs, masks)["loss"].backward()
    network.head.update_prototypes(outputs["prototype_update"])
    logits = network.predict(images)                 # (B, C, H, W) at the input size

The result is a :class:`~protoseg.models.Segmentor`: protoseg's methods, inference (multi-scale, sliding
window) and export take it as they take their own. smp's segmentation head (the last 3x3 / 1x1 conv and
its upsampling) is dropped; the new head sees the decoder's features, and ``predict`` upsamples its
logits to the input size. smp's encoders want image sizes divisible by their output stride (32).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..models.heads.protoseg import ProtoSegHead
from ..models.segmentor import Segmentor


class SMPDecoder(nn.Module):
    """An smp decoder as a protoseg decoder: ``forward(features)`` with the encoder's list of
    ``(B, C_i, H_i, W_i)`` maps -> ``(B, Cout, h, w)`` (smp >= 0.5 takes the list, older releases the
    maps as separate arguments)."""

    def __init__(self, decoder: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.out_channels = out_channels
        parameters = inspect.signature(decoder.forward).parameters.values()
        self.unpack = any(parameter.kind is inspect.Parameter.VAR_POSITIONAL for parameter in parameters)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.decoder(*features) if self.unpack else self.decoder(features)


def decoder_channels(model: nn.Module) -> int:
    """Channels of an smp model's decoder output: the input channels of its segmentation head."""
    head = getattr(model, "segmentation_head", None)
    convs = [module for module in head.modules() if isinstance(module, nn.Conv2d)] if head is not None else []
    if not (hasattr(model, "encoder") and hasattr(model, "decoder") and convs):
        raise ValueError(
            f"expected a segmentation_models_pytorch model (encoder, decoder, segmentation_head), "
            f"got a {type(model).__name__}"
        )
    return convs[0].in_channels


def protoseg_segmentor(
    model: nn.Module,
    num_classes: int,
    make_head: Callable[[int, int], nn.Module] | None = None,
    **head_options: Any,
) -> Segmentor:
    """``model``'s encoder and decoder with a protoseg head instead of its segmentation head.

    Args:
        model: an smp model (``smp.Unet``, ``smp.FPN``, ``smp.DeepLabV3Plus``, ...).
        num_classes: C of the new head.
        make_head: ``(in_channels, num_classes) -> head`` for another protoseg head (``LinearHead``,
            ``ProtoSegContrastHead``, ...); default a :class:`ProtoSegHead` with ``head_options``
            (``num_prototypes``, ``proj_dim``, ``projection``, ``momentum``, ...).
    """
    channels = decoder_channels(model)
    if make_head is not None and head_options:
        raise ValueError(f"give make_head or ProtoSegHead options, not both: {sorted(head_options)}")
    head = (
        make_head(channels, num_classes) if make_head else ProtoSegHead(channels, num_classes, **head_options)
    )
    return Segmentor(model.encoder, SMPDecoder(model.decoder, channels), head, num_classes)
