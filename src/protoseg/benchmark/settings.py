"""What is benchmarked: the methods, their baselines, the presets and one config per method.

Every method of a family is built from the same config apart from ``model.head`` / ``model.wsss``, so
the methods share backbone, decoder, batch and crop and differ only by what the method adds.

Presets:

- ``cpu`` (default): the built-in benchmark (configs/shapes): ``tf_efficientnet_lite0`` without
  pretrained weights, decoder 128, D = 128, batch 8, 128 x 128 crops, 11 classes (10 foreground tags
  for WSSS, backbone at output stride 16), no AMP.
- ``gpu``: the papers' setting: HRNet-W48 (decoder and ProtoSeg D = 720), batch 8, 512 x 1024 crops,
  19 classes (Cityscapes), AMP; WSSS on ResNet-101 at output stride 16, 448 x 448 crops, 20 tags (VOC).
- ``quick`` (``--quick``, either preset): the built-in tiny CNN, batch 2, 64 x 64, few repeats and
  small component sizes, to check that everything runs (under a minute on a CPU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..config import Config, load_config

SEGMENTATION = "segmentation"
WSSS = "wsss"
METHODS: dict[str, tuple[str, ...]] = {
    SEGMENTATION: ("linear", "protoseg", "contrast", "protoseg_contrast"),
    WSSS: ("cam", "ppc", "rca"),
}
BASELINES: dict[str, str] = {SEGMENTATION: "linear", WSSS: "cam"}
FAMILY_OF: dict[str, str] = {method: family for family, names in METHODS.items() for method in names}

STEADY_STATE_ITERATION = 1_000_000
"""Iteration passed to every criterion / WSSS method: past every warm-up and start gate (contrast
``warmup_iters``, RCA ``contrast_start_iter``), so each method pays its full per-step cost."""


@dataclass
class ScalingSettings:
    """Sizes of the component-scaling sweeps (see :mod:`protoseg.benchmark.components`)."""

    classes: tuple[int, ...] = (19, 59, 150, 171)
    pixels: tuple[int, ...] = (16384, 65536, 262144, 1048576)
    prototypes: tuple[int, ...] = (1, 10, 50)
    base_classes: int = 19
    base_pixels: int = 65536
    base_prototypes: int = 10
    dim: int = 128
    memory_sizes: tuple[int, ...] = (100, 500, 2000)
    memory_classes: int = 20
    memory_dim: int = 256
    kmeans_iters: int = 10
    ppc_batches: tuple[int, ...] = (2, 4, 8, 16)
    ppc_feature_size: int = 28
    ppc_classes: int = 20
    ppc_dim: int = 128
    warmup: int = 1
    repeats: int = 5


@dataclass
class BenchmarkSettings:
    """Everything one benchmark run needs; ``overrides`` are config ``key=value`` strings."""

    preset: str
    device: torch.device
    num_classes: int  # segmentation classes, background included
    wsss_num_classes: int  # foreground tags
    common_overrides: list[str]
    segmentation_overrides: list[str]
    wsss_overrides: list[str]
    warmup: int = 2
    repeats: int = 10
    memory_steps: int = 2
    sync_steps: int = 1
    data_batches: int = 10
    data_rounds: int = 3
    data_workers: tuple[int, ...] = (0, 2)
    threads: int | None = None
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    methods: tuple[str, ...] = tuple(FAMILY_OF)
    user_overrides: list[str] = field(default_factory=list)

    def config(self, method: str) -> Config:
        """The config of ``method`` (a head or a WSSS method name) under these settings."""
        family = family_of(method)
        selector = f"model.head={method}" if family == SEGMENTATION else f"model.wsss={method}"
        family_overrides = self.segmentation_overrides if family == SEGMENTATION else self.wsss_overrides
        return load_config(None, self.common_overrides + family_overrides + [selector] + self.user_overrides)

    def model_num_classes(self, method: str) -> int:
        """Classes the model predicts: all classes for a segmentor, the foreground tags for WSSS."""
        return self.num_classes if family_of(method) == SEGMENTATION else self.wsss_num_classes

    def methods_of(self, family: str) -> list[str]:
        """The selected methods of ``family``, baseline first (added when any method of the family is
        selected); empty when none is."""
        baseline = BASELINES[family]
        selected = [method for method in METHODS[family] if method in self.methods and method != baseline]
        if not selected and baseline not in self.methods:
            return []
        return [baseline] + selected


def family_of(method: str) -> str:
    if method not in FAMILY_OF:
        raise ValueError(f"unknown method '{method}' (valid: {', '.join(FAMILY_OF)})")
    return FAMILY_OF[method]


_SHAPES_NUM_CLASSES = 11

_CPU_COMMON = [
    "model.backbone.name=tf_efficientnet_lite0",
    "model.backbone.pretrained=false",
    "train.batch_size=8",
    "data.crop_size=[128, 128]",
    "data.scale_range=[0.75, 1.5]",
    "data.mean=[0.5, 0.5, 0.5]",
    "data.std=[0.5, 0.5, 0.5]",
    "train.optimizer=sgd",
    "train.lr=0.02",
    "train.momentum=0.9",
    "train.weight_decay=0.0001",
    "train.amp=false",
]
_CPU_SEGMENTATION = [
    "model.decoder.channels=128",
    "model.protoseg.proj_dim=128",
    "model.contrast.proj_dim=128",
]
_CPU_WSSS = [
    "model.backbone.output_stride=16",
    "model.ppc.scale_factor=0.5",
    "model.rca.memory_size=200",
    "model.rca.kmeans_iters=10",
]
_GPU_COMMON = [
    "model.backbone.pretrained=false",
    "train.batch_size=8",
    "train.optimizer=sgd",
    "train.lr=0.01",
    "train.momentum=0.9",
    "train.weight_decay=0.0005",
    "train.amp=true",
]
_GPU_SEGMENTATION = [
    "model.backbone.name=hrnet_w48",
    "data.crop_size=[512, 1024]",
    "model.decoder.channels=null",
    "model.protoseg.proj_dim=null",
    "model.contrast.proj_dim=256",
]
_GPU_WSSS = [
    "model.backbone.name=resnet101",
    "model.backbone.output_stride=16",
    "data.crop_size=[448, 448]",
    "model.rca.memory_size=500",
]
_QUICK_COMMON = [
    "model.backbone.name=tiny",
    "model.backbone.pretrained=false",
    "train.batch_size=2",
    "data.crop_size=[64, 64]",
    "train.amp=false",
]
_QUICK_SEGMENTATION = [
    "model.decoder.channels=32",
    "model.protoseg.proj_dim=32",
    "model.contrast.proj_dim=32",
    "model.contrast.max_views=16",  # 16 x 16 features per image: 100 views would sample no anchor
]
_QUICK_WSSS = ["model.rca.memory_size=20", "model.rca.kmeans_iters=3", "model.ppc.top_k=4"]

QUICK_SCALING = ScalingSettings(
    classes=(19, 59, 150, 171),
    pixels=(1024, 4096, 16384),
    prototypes=(1, 10, 50),
    base_pixels=4096,
    dim=32,
    memory_sizes=(20, 80),
    memory_dim=32,
    kmeans_iters=3,
    ppc_batches=(1, 2, 4),
    ppc_feature_size=8,
    ppc_dim=32,
    warmup=1,
    repeats=2,
)

PRESETS = ("cpu", "gpu")


def preset_settings(preset: str, device: torch.device, quick: bool = False) -> BenchmarkSettings:
    """The settings of ``preset`` (``cpu`` | ``gpu``) on ``device``; ``quick`` shrinks everything."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (valid: {', '.join(PRESETS)})")
    if preset == "cpu":
        settings = BenchmarkSettings(
            preset,
            device,
            _SHAPES_NUM_CLASSES,
            _SHAPES_NUM_CLASSES - 1,
            _CPU_COMMON,
            _CPU_SEGMENTATION,
            _CPU_WSSS,
        )
    else:
        settings = BenchmarkSettings(preset, device, 19, 20, _GPU_COMMON, _GPU_SEGMENTATION, _GPU_WSSS)
    if quick:
        settings = dataclasses.replace(
            settings,
            segmentation_overrides=settings.segmentation_overrides + _QUICK_COMMON + _QUICK_SEGMENTATION,
            wsss_overrides=settings.wsss_overrides + _QUICK_COMMON + _QUICK_WSSS,
            warmup=1,
            repeats=3,
            memory_steps=1,
            data_batches=3,
            data_rounds=1,
            scaling=QUICK_SCALING,
        )
    return settings
