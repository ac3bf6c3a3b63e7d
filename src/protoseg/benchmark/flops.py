"""Floating-point operations of one call: matmuls and convolutions, as ``torch.utils.flop_counter``
counts them, with the weight gradient of a grouped convolution counted right.

torch's formula for ``convolution_backward`` builds the weight gradient as a convolution over the
batch axis and drops the groups, so a depthwise convolution's weight gradient is counted ``C`` times
(EfficientNet's backward comes out at 9x its forward). Here each gradient of a convolution costs what
its forward costs (every product ``x * w`` of the forward appears once in the input gradient and once
in the weight gradient); for ungrouped convolutions this equals torch's count.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


def convolution_backward_flops(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: object,
    _stride: object,
    _padding: object,
    _dilation: object,
    transposed: bool,
    _output_padding: object,
    _groups: int,
    output_mask: list[bool],
    out_shape: object = None,
    **kwargs: object,
) -> int:
    """FLOPs of ``aten.convolution_backward``: the forward's count (``w_shape`` holds ``Cin / groups``)
    once per requested gradient among input and weight (the bias gradient is a sum, not counted)."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(function: Callable[[], object]) -> int:
    """Matmul and convolution FLOPs (2 per multiply-add) of one call of ``function``.

    Run it under ``no_grad`` rather than ``inference_mode`` (torch 2.4's counter sees no op in
    ``inference_mode``)."""
    mapping = {torch.ops.aten.convolution_backward: convolution_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        function()
    return int(counter.get_total_flops())
