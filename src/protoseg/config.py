"""Run configuration: plain dataclasses loaded from YAML and overridden from the command line.

Unknown keys and values of the wrong type are errors that name the key, so a typo in a config
never silently falls back to a default.

    cfg = load_config("configs/shapes/linear.yaml", overrides=["train.iterations=100"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the key."""


@dataclass
class DataConfig:
    name: str = "voc"  # voc | cityscapes | ade20k | cocostuff | folder
    root: str = "data/shapes"
    train_split: str = "train"
    val_split: str = "val"
    label_dir: str | None = None  # replaces the training masks (pseudo labels for WSSS stage 2)
    use_aug: bool = False  # VOC: SegmentationClassAug + train_aug list
    train_list: str | None = None  # a file of image ids replacing the training split's list
    tag_file: str | None = None  # image-level tags (cls_labels.npy, CSV or JSON) for WSSS on any dataset
    num_classes: int | None = None  # folder datasets without classes.txt
    crop_size: list[int] = field(default_factory=lambda: [128, 128])  # (height, width)
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    flip: bool = True
    color_jitter: float = 0.0
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    num_workers: int = 2


@dataclass
class BackboneConfig:
    name: str = "tiny"
    pretrained: bool | str = False  # true: timm hub; a path: a local checkpoint
    output_stride: int | None = None  # 8 / 16 / 32 where the backbone supports it
    out_indices: list[int] | None = None


@dataclass
class DecoderConfig:
    channels: int | None = 256  # None: sum of the backbone's channels (HRNet's 720 for W48)
    dropout: float = 0.0


@dataclass
class ProtoSegConfig:
    num_prototypes: int = 10
    proj_dim: int | None = None  # None: decoder channels (the paper's D = Cin)
    momentum: float = 0.999
    assignment: str = "argmax"  # argmax | gumbel (released code)
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 3
    ppc_weight: float = 0.01
    ppd_weight: float = 0.001
    temperature: float = 1.0  # released code: no temperature (tau = 1)
    init: str = "random"  # random (paper) | data: first update sets each prototype to its pixels' mean
    projection: str = "mlp"  # mlp (paper: 1x1 conv, ReLU, 1x1 conv) | none (embed the decoder features)


@dataclass
class ContrastConfig:
    proj_dim: int = 256
    weight: float = 0.1
    warmup_iters: int = 5000
    temperature: float = 0.1
    base_temperature: float = 0.07
    max_samples: int = 1024
    max_views: int = 100
    use_memory: bool = False
    memory_size: int = 5000
    pixels_per_image: int = 10


@dataclass
class PPCConfig:
    temperature: float = 0.1
    top_k: int = 32
    bg_threshold: float = 0.2
    cross_weight: float = 0.1
    intra_weight: float = 0.1
    mining: str = "paper"  # paper | released
    scale_factor: float = 0.3


@dataclass
class RCAConfig:
    memory_size: int = 500
    momentum: float = 0.99
    score_threshold: float = 0.7
    contrast_weight: float = 0.01
    aux_weight: float = 0.4
    contrast_start_iter: int = 0
    num_prototypes: int = 10
    kmeans_iters: int = 10
    temperature: float = 0.07
    mixup_alpha: float = 8.0
    aggregation: str = "paper"  # paper | released
    region_mask: str = "paper"  # paper: P_l > mean(P_l); released: the same test on softmax_l(P)
    attention_scale: float = 1.0  # scale of F Q^T inside the aggregation softmax (paper: 1)
    refresh_interval: int = 0  # iterations between k-means refreshes; 0: once per epoch


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    head: str = "linear"  # linear | protoseg | contrast | protoseg_contrast
    wsss: str | None = None  # None: fully supervised; cam | ppc | rca: CAM network from image tags
    protoseg: ProtoSegConfig = field(default_factory=ProtoSegConfig)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    ppc: PPCConfig = field(default_factory=PPCConfig)
    rca: RCAConfig = field(default_factory=RCAConfig)
    sync_bn: bool = True  # converted to SyncBatchNorm under multi-GPU DDP (GPU only)


@dataclass
class TrainConfig:
    iterations: int = 1000
    batch_size: int = 8  # per process
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    backbone_lr_mult: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iters: int = 0
    poly_power: float = 0.9
    amp: bool = True  # used on GPU only
    amp_dtype: str = "float16"  # float16 (with loss scaling) | bfloat16 (no loss scaling)
    grad_clip: float | None = None
    log_interval: int = 20
    val_interval: int = 500
    checkpoint_interval: int = 500
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class EvalConfig:
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    mode: str = "whole"  # whole | slide
    crop_size: list[int] | None = None  # sliding window size; None: data.crop_size
    stride: list[int] | None = None  # sliding window stride; None: 2/3 of the window
    cam_threshold: float = 0.2  # WSSS: background threshold for seed mIoU during training


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation, converting ints to floats where a float is due."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"config key '{key}': {value!r} matches none of {annotation}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        return _build(annotation, value, key + ".")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
        return value
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
    if annotation in (float, str) and not isinstance(value, annotation):
        raise ConfigError(f"config key '{key}' expects {annotation.__name__}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    types_by_name = _field_types(cls)
    unknown = sorted(set(values) - set(types_by_name))
    if unknown:
        valid = ", ".join(prefix + name for name in types_by_name)
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (valid keys here: {valid})")
    kwargs = {name: _coerce(value, types_by_name[name], prefix + name) for name, value in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted_key: str, value: Any) -> None:
    parts = dotted_key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted_key}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.1"`` -> ``("train.lr", 0.1)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.iterations=100)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    return key, yaml.safe_load(raw) if raw.strip() else None


def config_from_dict(values: dict[str, Any]) -> Config:
    return _build(Config, values)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults), apply ``key=value`` overrides, validate."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        values = loaded or {}
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(values, key, value)
    try:
        return config_from_dict(values)
    except ConfigError as error:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"{error}{where}") from None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
