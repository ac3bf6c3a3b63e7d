"""What is benchmarked: the methods, their baselines, the presets and one config per method.

A preset names one config file of protoseg's own configs per method (the files ``protoseg train``
uses), plus a few overrides that make it a benchmark (no weight download, the preset's AMP). The
configs of a family share their ``_base_`` file, so the methods of a family share backbone, decoder,
batch and crop and differ only by what the method adds.

Presets:

- ``cpu`` (default): the built-in benchmark, ``configs/shapes/*.yaml`` (``tf_efficientnet_lite0``,
  decoder 128, D = 128, batch 8, 96 x 96 crops, 11 classes; WSSS: 10 foreground tags, output stride 16),
  no AMP.
- ``gpu``: the papers' settings, ``configs/cityscapes/*`` (HRNet-W48, decoder and ProtoSeg D = 720,
  batch 8, 512 x 1024 crops, 19 classes, AMP) and ``configs/voc/wsss-*`` (ResNet-101 at output stride
  16, 448 x 448 crops, 20 tags, AMP).
- ``quick`` (``--quick``, either preset): the built-in tiny CNN, batch 2, 64 x 64, few repeats and
  small component sizes, to check that everything runs (under a minute on a CPU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from ..config import Config, load_config
from ..methods import BASELINES, METHODS, method_class

METHODS_BY_FAMILY: dict[str, tuple[str, ...]] = {
    family: tuple(name for name, method in METHODS.items() if method.family == family) for family in BASELINES
}
FAMILY_OF: dict[str, str] = {name: method.family for name, method in METHODS.items()}

STEADY_STATE_ITERATION = 1_000_000
"""Iteration passed to every method: past every warm-up and start gate (contrast ``start_iter``, RCA
``contrast_start_iter``), so each method pays its full per-step cost."""

PRESET_CONFIGS: dict[str, dict[str, str]] = {
    "cpu": {
        "linear": "shapes/linear.yaml",
        "protoseg": "shapes/protoseg.yaml",
        "contrast": "shapes/contrast.yaml",
        "protoseg_contrast": "shapes/protoseg_contrast.yaml",
        "cam": "shapes/wsss_cam.yaml",
        "seam": "shapes/wsss_seam.yaml",
        "eps": "shapes/wsss_eps.yaml",
        "oaa": "shapes/wsss_oaa.yaml",
        "ppc": "shapes/wsss_ppc.yaml",
        "rca": "shapes/wsss_rca.yaml",
    },
    "gpu": {
        "linear": "cityscapes/linear_hrnet-w48_1x8-80k_cityscapes-512x1024.yaml",
        "protoseg": "cityscapes/protoseg_hrnet-w48_1x8-80k_cityscapes-512x1024.yaml",
        "contrast": "cityscapes/contrast_hrnet-w48_1x8-40k_cityscapes-512x1024.yaml",
        "protoseg_contrast": "cityscapes/protoseg-contrast_hrnet-w48_1x8-80k_cityscapes-512x1024.yaml",
        "cam": "voc/wsss-cam_r101-d16_1x8-8ep_voc12aug-448x448.yaml",
        "seam": "voc/wsss-seam_r101-d16_1x8-8ep_voc12aug-448x448.yaml",
        "eps": "voc/wsss-eps_r101-d16_1x8-8ep_voc12aug-448x448.yaml",
        "oaa": "voc/wsss-oaa_r101-d16_1x8-8ep_voc12aug-448x448.yaml",
        "ppc": "voc/wsss-ppc_r101-d16_1x8-8ep_voc12aug-448x448.yaml",
        "rca": "voc/wsss-rca_r101-d16_1x8-8ep_voc12aug-448x448.yaml",
    },
}
"""The config file of each method in each preset, relative to protoseg's configs folder."""

PRESET_OVERRIDES: dict[str, list[str]] = {
    "cpu": ["model.backbone.pretrained=false", "train.amp=false"],
    "gpu": ["model.backbone.pretrained=false", "train.amp=true"],
}
"""What makes a config a benchmark: no weights to load (they do not change the cost), the preset's AMP."""

PRESET_CLASSES: dict[str, dict[str, int]] = {
    # classes of the preset's datasets, background included (WSSS models predict one fewer)
    "cpu": {"segmentation": 11, "wsss": 11},
    "gpu": {"segmentation": 19, "wsss": 21},
}


def config_path(relative: str) -> Path:
    """A config file shipped with protoseg (``protoseg/configs/<relative>``)."""
    return Path(str(resources.files("protoseg") / "configs" / relative))


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
    config_files: dict[str, str]
    preset_overrides: list[str]
    classes: dict[str, int]
    quick_overrides: list[str] = field(default_factory=list)
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
        """The config of ``method`` under these settings: its preset file and the overrides."""
        family = family_of(method)
        quick = [_untagged(item) for item in self.quick_overrides if _applies(item, family)]
        path = config_path(self.config_files[method])
        return load_config(path, self.preset_overrides + quick + self.user_overrides)

    @property
    def num_classes(self) -> int:
        """Segmentation classes, background included."""
        return self.classes["segmentation"]

    @property
    def wsss_num_classes(self) -> int:
        """Foreground tags of the WSSS dataset."""
        return self.classes["wsss"] - 1

    def dataset_classes(self, method: str) -> int:
        """Classes of the dataset ``method`` trains on (background included)."""
        return self.classes[family_of(method)]

    def methods_of(self, family: str) -> list[str]:
        """The selected methods of ``family``, baseline first (added when any method of the family is
        selected); empty when none is."""
        baseline = BASELINES[family]
        selected = [m for m in METHODS_BY_FAMILY[family] if m in self.methods and m != baseline]
        if not selected and baseline not in self.methods:
            return []
        return [baseline] + selected


def family_of(method: str) -> str:
    return method_class(method).family


def _applies(override: str, family: str) -> bool:
    """Quick overrides are tagged ``segmentation:`` / ``wsss:`` or apply to both."""
    tag, _, _ = override.partition(":")
    return tag not in BASELINES or tag == family


def _untagged(override: str) -> str:
    tag, _, rest = override.partition(":")
    return rest if tag in BASELINES else override


_QUICK_OVERRIDES = [
    "model.backbone.name=tiny",
    "model.backbone.pretrained=false",
    "train.batch_size=2",
    "data.crop_size=[64, 64]",
    "train.amp=false",
    "segmentation:model.decoder.channels=32",
    "segmentation:model.protoseg.proj_dim=32",
    "segmentation:model.contrast.proj_dim=32",
    # 16 x 16 features per image: 100 views would sample no anchor
    "segmentation:model.contrast.max_views=16",
    "wsss:model.rca.memory_size=20",
    "wsss:model.rca.kmeans_iters=3",
    "wsss:model.ppc.top_k=4",
]

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

PRESETS = tuple(PRESET_CONFIGS)


def preset_settings(preset: str, device: torch.device, quick: bool = False) -> BenchmarkSettings:
    """The settings of ``preset`` (``cpu`` | ``gpu``) on ``device``; ``quick`` shrinks everything."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (valid: {', '.join(PRESETS)})")
    settings = BenchmarkSettings(
        preset, device, PRESET_CONFIGS[preset], PRESET_OVERRIDES[preset], PRESET_CLASSES[preset]
    )
    if quick:
        settings = dataclasses.replace(
            settings,
            quick_overrides=_QUICK_OVERRIDES,
            warmup=1,
            repeats=3,
            memory_steps=1,
            data_batches=3,
            data_rounds=1,
            scaling=QUICK_SCALING,
        )
    return settings
