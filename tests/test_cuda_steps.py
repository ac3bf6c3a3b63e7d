"""On a GPU: every method's training step under AMP, and no host synchronisation in it.

Skipped without CUDA (run them in a GPU session: ``PYTHONPATH=src python -m pytest
tests/test_cuda_steps.py``). Without a GPU, ``test_fake_cuda.py`` checks device placement and
data-dependent ops of the forward, and ``test_amp_steps.py`` the dtypes under CPU autocast.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from protoseg.benchmark.settings import FAMILY_OF, preset_settings
from protoseg.benchmark.steps import MethodBench
from protoseg.prototypes import PrototypeBank

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def cuda_bench(method: str, amp_dtype: str = "float16") -> MethodBench:
    """The built-in benchmark's setting (shapes batch 8 at 96 x 96), on the GPU with AMP."""
    settings = preset_settings("cpu", torch.device("cuda"))
    overrides = ["train.amp=true", f"train.amp_dtype={amp_dtype}"]
    settings = dataclasses.replace(settings, user_overrides=overrides)
    bench = MethodBench(method, settings)
    assert bench.use_amp
    return bench


@pytest.mark.parametrize("method", list(FAMILY_OF))
def test_forward_backward_and_optimiser_step_never_synchronise(method):
    """``torch.cuda.set_sync_debug_mode("error")`` over the trainer's forward half (the method's losses),
    the backward, the optimiser step and the method's after-step updates (prototypes, memories). The
    grad scaler (common to every method) is left out: ``GradScaler.step`` reads its inf flag on the host
    by design."""
    bench = cuda_bench(method)
    bench.train_step()  # lazy initialisations (cuBLAS / cuDNN handles, the sampling generator)
    bench.method.train()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            terms = bench.losses()
            bench.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            bench.optimizer.step()
            bench.method.after_step(bench.iteration)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(terms["loss"])


@pytest.mark.parametrize("method", list(FAMILY_OF))
def test_the_whole_bfloat16_step_never_synchronises(method):
    """With ``train.amp_dtype=bfloat16`` there is no grad scaler: the trainer's whole step (forward,
    backward, optimiser, lr schedule) runs under ``set_sync_debug_mode("error")``."""
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    bench = cuda_bench(method, "bfloat16")
    assert not bench.step.scaler.is_enabled()
    bench.train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            terms = bench.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(terms["loss"])


@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("method", list(FAMILY_OF))
def test_amp_training_steps_keep_state_finite_and_prototypes_unit_norm(method, amp_dtype):
    if amp_dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    bench = cuda_bench(method, amp_dtype)
    for _ in range(3):
        terms = bench.train_step()
    for name, value in terms.items():
        if torch.is_tensor(value) and value.is_floating_point():
            assert torch.isfinite(value).all(), name
    for name, parameter in bench.method.named_parameters():
        assert parameter.dtype == torch.float32 and torch.isfinite(parameter).all(), name
    for module in bench.method.modules():
        if isinstance(module, PrototypeBank):
            assert module.prototypes.dtype == torch.float32
            norms = module.prototypes.norm(dim=-1)
            torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
