"""Every method's whole training step (the trainer's own) under autocast, on real tensors.

CUDA autocast cannot run here, CPU autocast can, with the same kind of policy (convolutions and
matmuls in half precision, reductions and losses in float32): run at float16 (the CUDA AMP dtype) and
bfloat16, it catches what half-precision activations do to the rest of the step (dtype mismatches
against the float32 prototypes and memories, overflow in Sinkhorn or the contrast losses). Device
placement and host syncs under CUDA autocast are checked by ``test_fake_cuda.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from protoseg.benchmark.settings import FAMILY_OF, preset_settings
from protoseg.benchmark.steps import MethodBench
from protoseg.engine.amp import AmpSettings
from protoseg.prototypes import PixelQueue, PrototypeBank, RegionMemory

CPU = torch.device("cpu")
MEMORY = ["model.contrast.use_memory=true", "model.contrast.memory_size=64"]
CASES = [(method, []) for method in FAMILY_OF] + [("contrast", MEMORY), ("protoseg_contrast", MEMORY)]
CASE_IDS = [method + ("+memory" if overrides else "") for method, overrides in CASES]


def first_conv_output_dtypes(model: nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    conv = next(module for module in model.modules() if isinstance(module, nn.Conv2d))
    conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    return seen


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("method, overrides", CASES, ids=CASE_IDS)
def test_a_training_step_under_autocast_keeps_state_float32_finite_and_normalised(method, overrides, dtype):
    settings = preset_settings("cpu", CPU, quick=True)
    settings = dataclasses.replace(settings, user_overrides=overrides)
    bench = MethodBench(method, settings)
    # the benchmark, like the trainer, runs autocast on CUDA only
    bench.step.amp = AmpSettings(enabled=True, dtype=dtype, loss_scaling=False)
    conv_dtypes = first_conv_output_dtypes(bench.method)
    buffer_dtypes = {name: buffer.dtype for name, buffer in bench.method.named_buffers()}
    for _ in range(2):
        terms = bench.train_step()
    assert conv_dtypes and set(conv_dtypes) == {dtype}  # autocast was on, at this dtype
    for name, value in terms.items():
        if torch.is_tensor(value):
            assert value.dtype == torch.float32 and torch.isfinite(value).all(), (name, value)
    assert terms["loss"] > 0
    for name in ("contrast", "proto_contrast", "cp", "mixup"):  # the method's own term really ran
        if name in terms:
            assert terms[name] > 0, name
    for name, parameter in bench.method.named_parameters():
        assert parameter.dtype == torch.float32 and torch.isfinite(parameter).all(), name
    for name, buffer in bench.method.named_buffers():
        assert buffer.dtype == buffer_dtypes[name], name
        if buffer.is_floating_point():
            assert torch.isfinite(buffer).all(), name
    for module in bench.method.modules():
        if isinstance(module, PrototypeBank):
            norms = module.prototypes.norm(dim=-1)
            torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
        if isinstance(module, PixelQueue):
            for queue, filled in (
                (module.pixel_queue, module.pixel_filled),
                (module.segment_queue, module.segment_filled),
            ):
                slots = torch.arange(queue.shape[1]) < filled[:, None]
                assert slots.any()
                norms = queue[slots].norm(dim=-1)
                torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
        if isinstance(module, RegionMemory):
            assert torch.isfinite(module.memory).all()
