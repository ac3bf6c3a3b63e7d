"""Every method's training forward and inference on a CUDA device under AMP, without a GPU.

The trainer's forward half (:meth:`TrainStep.losses`: the method's losses under autocast), the
method's after-step updates (prototypes, memories) and the inference entry points run on fake CUDA
tensors (see
``fake_cuda.py``): this proves, on a CPU-only machine, that nothing in them creates a tensor on the
wrong device or synchronises the host (any data-dependent op raises), and that the outputs and
buffers keep their dtypes under the CUDA autocast policy. Fake tensors do not check every dtype rule
(``mm`` or ``index_add_`` of float32 with float16 pass), so ``test_amp_steps.py`` runs the whole step
on real tensors under CPU autocast; the backward's host syncs are counted on real tensors by the
benchmark's ``sync`` suite and ``test_protoseg_no_sync.py``.
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

from fake_cuda import CUDA, cuda_reported_available, fake_batch, fake_cuda, fake_cuda_supported, to_fake_cuda
from protoseg.benchmark.batches import shapes_batch
from protoseg.benchmark.settings import FAMILY_OF, STEADY_STATE_ITERATION, BenchmarkSettings, preset_settings
from protoseg.benchmark.steps import prepare_steady_state
from protoseg.engine.amp import amp_settings
from protoseg.engine.optim import build_optimizer, build_scheduler
from protoseg.engine.step import TrainStep
from protoseg.methods import WEAKLY_SUPERVISED, DatasetInfo, build_method
from protoseg.ops.inference import predict_probabilities
from protoseg.ops.random import SeededGenerator
from protoseg.prototypes import PrototypeBank
from protoseg.wsss.cam_inference import multiscale_cam

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(
    not fake_cuda_supported(),
    reason=f"torch {torch.__version__} cannot run fake CUDA tensors without a driver",
)
WSSS = WEAKLY_SUPERVISED


def cpu_generator(self: SeededGenerator, device: torch.device) -> torch.Generator:
    # A CUDA generator needs a driver; fake random ops only use a generator's device for nothing.
    return torch.Generator().manual_seed(self.seed)


def default_inference(wsss: bool):
    if wsss:
        return lambda model, images: model.cams(images)
    return lambda model, images: model.network.predict(images)


def on_fake_cuda(settings: BenchmarkSettings, method: str, inference=None) -> dict:
    """Build ``method`` for real on the CPU (memories filled as in the benchmark's steady state), move
    it to fake CUDA, run the trainer's forward half and the method's after-step updates on a shapes
    batch, then ``inference(model, images)`` (default: ``predict`` / ``cams``) in eval mode under the
    config's autocast."""
    cfg = settings.config(method)
    wsss = FAMILY_OF[method] == WSSS
    torch.manual_seed(0)
    dataset = DatasetInfo(settings.dataset_classes(method), has_background=True)
    model = build_method(cfg.model, dataset, cfg.train.seed)
    prepare_steady_state(model)
    height, width = cfg.data.crop_size
    batch = shapes_batch(cfg.train.batch_size, height, width, settings.wsss_num_classes, CPU)
    if inference is None:
        inference = default_inference(wsss)
    with fake_cuda() as mode:
        to_fake_cuda(model, mode)
        before = {name: buffer.dtype for name, buffer in model.named_buffers()}
        amp = amp_settings(cfg.train.amp, cfg.train.amp_dtype, CUDA)
        conv_dtypes = first_conv_output_dtypes(model)
        with cuda_reported_available(), mock.patch.object(SeededGenerator, "__call__", cpu_generator):
            train = cfg.train
            optimizer = build_optimizer(model, train.optimizer, train.lr, train.momentum, train.weight_decay)
            scheduler = build_scheduler(optimizer, train.iterations)
            step = TrainStep(model, optimizer, scheduler, amp, CUDA)
            model.train()
            terms = step.losses(fake_batch(batch, mode), STEADY_STATE_ITERATION)
            model.after_step(STEADY_STATE_ITERATION)
            model.eval()
            images = fake_batch(batch, mode)["image"].to(CUDA)
            with torch.no_grad(), torch.autocast("cuda", dtype=amp.dtype, enabled=amp.enabled):
                output = inference(model, images)
    return {
        "terms": terms,
        "output": output,
        "model": model,
        "buffer_dtypes": before,
        "cfg": cfg,
        "conv_dtypes": conv_dtypes,
    }


def first_conv_output_dtypes(model: nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    conv = next(module for module in model.modules() if isinstance(module, nn.Conv2d))
    conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    return seen


def check_training_forward(result: dict) -> None:
    terms = result["terms"]
    assert "loss" in terms
    for name, value in terms.items():
        if torch.is_tensor(value):
            assert value.device == CUDA, name
    assert terms["loss"].dim() == 0 and terms["loss"].dtype == torch.float32
    assert terms["loss"].requires_grad
    for name, buffer in result["model"].named_buffers():  # updated in place, never re-typed or moved
        assert buffer.device == CUDA, name
        assert buffer.dtype == result["buffer_dtypes"][name], name
    for module in result["model"].modules():
        if isinstance(module, PrototypeBank):
            assert module.prototypes.dtype == torch.float32


def with_amp(preset: str, dtype: str = "float16") -> BenchmarkSettings:
    settings = preset_settings(preset, CUDA)
    return dataclasses.replace(settings, user_overrides=["train.amp=true", f"train.amp_dtype={dtype}"])


def test_the_harness_catches_host_syncs_device_mismatches_and_applies_cuda_autocast():
    layer = nn.Linear(4, 3)
    with fake_cuda() as mode:
        to_fake_cuda(layer, mode)
        inputs = torch.randn(5, 4, device=CUDA)
        with cuda_reported_available():
            with torch.autocast("cuda"):
                assert layer(inputs).dtype == torch.float16
            with pytest.raises(DataDependentOutputException):
                layer(inputs).sum().item()
            with pytest.raises(DynamicOutputShapeException):
                inputs[inputs > 0]
            with pytest.raises(RuntimeError, match="device"):
                layer(inputs) + torch.arange(3.0).expand(5, 3)  # a CPU tensor made without device=


@pytest.mark.parametrize("method", list(FAMILY_OF))
def test_training_forward_and_inference_run_on_cuda_under_amp_without_host_sync(method):
    result = on_fake_cuda(with_amp("cpu"), method)
    check_training_forward(result)
    assert set(result["conv_dtypes"]) == {torch.float16}  # train forward and inference under CUDA AMP
    cfg, output = result["cfg"], result["output"]
    batch, (height, width) = cfg.train.batch_size, cfg.data.crop_size
    assert output.device == CUDA
    if FAMILY_OF[method] == WSSS:
        assert output.shape[:2] == (batch, 10)
    else:
        assert output.shape == (batch, 11, height, width)


@pytest.mark.parametrize("base", ["seam", "eps"])
def test_ppc_on_each_base_runs_on_cuda_under_amp_without_host_sync(base):
    settings = with_amp("cpu")
    overrides = [f"model.ppc.base={base}", "model.ppc.top_k_divisor=8", "data.saliency_dir=unused"]
    settings = dataclasses.replace(settings, user_overrides=settings.user_overrides + overrides)
    result = on_fake_cuda(settings, "ppc")
    check_training_forward(result)
    assert {"cls", "cp", "cc", "intra"} <= set(result["terms"])
    output = result["output"]
    assert output.device == CUDA and output.shape[:2] == (result["cfg"].train.batch_size, 10)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.rca.base=oaa", "model.oaa.start_epoch=0"],
        ["model.rca.base=eps", "data.saliency_dir=unused"],
        ["model.rca.head=released", "model.rca.query_projection=released", "model.rca.attention=cosine",
         "model.rca.contrast_reduction=released"],
    ],
    ids=["oaa", "eps", "released-parts"],
)  # fmt: skip
def test_rca_on_each_base_and_with_the_released_parts_runs_on_cuda_under_amp_without_host_sync(overrides):
    settings = with_amp("cpu")
    settings = dataclasses.replace(settings, user_overrides=settings.user_overrides + overrides)
    result = on_fake_cuda(settings, "rca")
    check_training_forward(result)
    assert {"cls", "cls_aux", "contrast", "mixup"} <= set(result["terms"])
    output = result["output"]
    assert output.device == CUDA and output.shape[:2] == (result["cfg"].train.batch_size, 10)


def test_bfloat16_amp_runs_the_network_in_bfloat16_on_cuda():
    with mock.patch.object(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True):
        result = on_fake_cuda(with_amp("cpu", "bfloat16"), "protoseg")
    check_training_forward(result)
    assert result["conv_dtypes"] and set(result["conv_dtypes"]) == {torch.bfloat16}


def test_multiscale_flip_and_sliding_window_inference_run_on_cuda_under_amp():
    def sliding(model, images):
        return predict_probabilities(
            model.network.predict, images, 11, scales=(0.75, 1.0), flip=True, mode="slide", window=(96, 96)
        )

    result = on_fake_cuda(with_amp("cpu"), "protoseg", inference=sliding)
    assert result["output"].shape == (8, 11, 96, 96)
    assert result["output"].device == CUDA and result["output"].dtype == torch.float32

    def cam(model, images):
        tags = torch.zeros(10, device=CUDA)
        return multiscale_cam(model.cams, images[0], tags, scales=(0.5, 1.0))

    result = on_fake_cuda(with_amp("cpu"), "ppc", inference=cam)
    assert result["output"].shape == (10, 96, 96)
    assert result["output"].device == CUDA and result["output"].dtype == torch.float32


@pytest.mark.slow
@pytest.mark.parametrize("method", list(FAMILY_OF))
def test_the_gpu_benchmark_preset_runs_on_cuda_without_host_sync(method):
    """The papers' setting the GPU benchmark runs: HRNet-W48 at 512 x 1024 (D = 720), batch 8, AMP;
    WSSS on ResNet-101 at 448 x 448."""
    settings = preset_settings("gpu", CUDA)
    result = on_fake_cuda(settings, method)
    assert result["cfg"].train.amp
    check_training_forward(result)
    if FAMILY_OF[method] != WSSS:
        assert result["output"].shape == (8, 19, 512, 1024)
