"""Run configuration: plain dataclasses loaded from YAML and overridden from the command line.

Unknown keys, values of the wrong type and values outside a field's limits are errors that name the
key (and the ``--set`` override or the file it came from), so a typo never silently falls back to a
default. ``model`` has one section per method that has options (``model.protoseg``, ``model.rca``,
...), collected from the method registry (:data:`protoseg.methods.SECTIONS`); ``model.method`` picks
the method.

A config file may name one base file, ``_base_: base.yaml`` (a path relative to the file; one
level, no chains): the file's keys are merged over the base's, mappings key by key, anything else
replaced.

    cfg = load_config("configs/shapes/linear.yaml", overrides=["train.iterations=100"])

Configs written before ``model.method`` existed keep loading (``model.head`` / ``model.wsss``, the
renamed keys of :data:`RENAMED_KEYS`), with a warning that says what to write instead.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.build import DATASETS
from .fields import check_value, field_limits, setting
from .files import atomic_write_text
from .methods import METHODS, SECTIONS


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the key."""


class ConfigKeyWarning(UserWarning):
    """A config uses a key that was renamed; it is read under its new name."""


@dataclass
class DataConfig:
    name: str = setting("voc", choices=tuple(DATASETS))  # dataset format
    root: str = "data/shapes"
    train_split: str = "train"
    val_split: str = "val"
    label_dir: str | None = None  # replaces the training masks (pseudo labels for WSSS stage 2)
    use_aug: bool = False  # VOC: SegmentationClassAug + train_aug list
    train_list: str | None = None  # a file of image ids replacing the training split's list
    tag_file: str | None = None  # image-level tags (cls_labels.npy, CSV or JSON) for WSSS on any dataset
    saliency_dir: str | None = None  # <image id>.png saliency maps of the training images (EPS)
    num_classes: int | None = setting(None, minimum=1, maximum=255)  # folder datasets without classes.txt
    crop_size: list[int] = setting(default_factory=lambda: [128, 128], length=2, items={"minimum": 1})
    scale_range: list[float] = setting(
        default_factory=lambda: [0.5, 2.0], length=2, items={"greater_than": 0.0}
    )  # random rescaling of the training images, (low, high)
    aspect_range: list[float] = setting(
        default_factory=lambda: [1.0, 1.0], length=2, items={"greater_than": 0.0}
    )  # random aspect ratio of the rescaling (the releases: [0.9, 1.1])
    min_side: int | None = setting(None, minimum=1)  # resize the shorter side to this first (ADE20K: 520)
    flip: bool = True
    color_jitter: float = setting(0.0, minimum=0.0, maximum=1.0)
    brightness_shift: int = setting(0, minimum=0, maximum=255)  # +-shift on 8-bit values (releases: 10)
    mean: list[float] = setting(default_factory=lambda: [0.485, 0.456, 0.406], length=3)
    std: list[float] = setting(
        default_factory=lambda: [0.229, 0.224, 0.225], length=3, items={"greater_than": 0.0}
    )
    num_workers: int = setting(2, minimum=0)


@dataclass
class BackboneConfig:
    name: str = "tiny"  # tiny (built-in CNN) or a timm model name
    pretrained: bool | str = False  # true: timm hub; "offline": a weights package; a path: a checkpoint
    output_stride: int | None = setting(None, choices=(8, 16, 32))
    out_indices: list[int] | None = None


@dataclass
class DecoderConfig:
    channels: int | None = setting(256, minimum=1)  # None: sum of the backbone's channels (HRNet's 720)
    dropout: float = setting(0.0, minimum=0.0, less_than=1.0)


def _model_config_class() -> type:
    """``ModelConfig``: the method, backbone, decoder, SyncBN switch and one section per method section."""
    fields: list[tuple[str, Any, Any]] = [
        # checked against the registry when the config is read (see _check_relations)
        ("method", str, field(default="linear")),
        ("backbone", BackboneConfig, field(default_factory=BackboneConfig)),
        ("decoder", DecoderConfig, field(default_factory=DecoderConfig)),
        # converted to SyncBatchNorm under multi-GPU DDP (GPU only)
        ("sync_bn", bool, field(default=True)),
        # per-class weights of the segmentation cross-entropy, one per class (the releases' ce_weight)
        ("ce_class_weights", list[float] | None, setting(None, minimum=1, items={"minimum": 0.0})),
    ]
    fields += [(name, section, field(default_factory=section)) for name, section in SECTIONS.items()]
    model_config = dataclasses.make_dataclass("ModelConfig", fields)
    model_config.__module__ = __name__
    return model_config


ModelConfig = _model_config_class()


@dataclass
class TrainConfig:
    iterations: int = setting(1000, minimum=1)
    batch_size: int = setting(8, minimum=1)  # per process
    optimizer: str = setting("sgd", choices=("sgd", "adamw"))
    lr: float = setting(0.01, greater_than=0.0)
    backbone_lr_mult: float = setting(1.0, minimum=0.0)
    momentum: float = setting(0.9, minimum=0.0, maximum=1.0)
    weight_decay: float = setting(5e-4, minimum=0.0)
    lr_warmup_iters: int = setting(0, minimum=0)  # linear learning-rate warm-up from 0.1 x lr
    poly_power: float = setting(0.9, minimum=0.0)
    amp: bool = True  # used on GPU only
    amp_dtype: str = setting("float16", choices=("float16", "bfloat16"))  # bfloat16: no loss scaling
    grad_clip: float | None = setting(None, greater_than=0.0)
    log_interval: int = setting(20, minimum=1)
    val_interval: int = setting(500, minimum=0)  # 0: validate at the end only
    checkpoint_interval: int = setting(500, minimum=0)  # 0: at validations and at the end only
    seed: int = setting(0, minimum=0)
    device: str = setting("auto", pattern=r"auto|cpu|cuda(:\d+)?")


@dataclass
class EvalConfig:
    scales: list[float] = setting(default_factory=lambda: [1.0], minimum=1, items={"greater_than": 0.0})
    flip: bool = False
    mode: str = setting("whole", choices=("whole", "slide"))
    crop_size: list[int] | None = setting(None, length=2, items={"minimum": 1})  # sliding window
    stride: list[int] | None = setting(None, length=2, items={"minimum": 1})  # default 2/3 of the window
    cam_threshold: float = setting(0.2, minimum=0.0, maximum=1.0)  # WSSS: background of the val seeds


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # type: ignore[valid-type]
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# -- reading values ----------------------------------------------------------------------------------
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
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
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
    limits = {f.name: field_limits(f) for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, types_by_name[name], prefix + name)
        problem = check_value(kwargs[name], limits[name])
        if problem:
            raise ConfigError(f"config key '{prefix}{name}' {problem}")
    return cls(**kwargs)


def _check_relations(cfg: Config) -> None:
    """Limits that involve two values, and the method name (checked against the registry as it is then)."""
    if cfg.model.method not in METHODS:
        raise ConfigError(
            f"config key 'model.method' must be one of {', '.join(METHODS)}, got {cfg.model.method!r}"
        )
    method = METHODS[cfg.model.method]
    for section, fields in method.ignores.items():
        values, defaults = getattr(cfg.model, section), SECTIONS[section]()
        for name in fields:
            if getattr(values, name) != getattr(defaults, name):
                raise ConfigError(
                    f"config key 'model.{section}.{name}' does not apply to model.method={method.name} "
                    f"(leave it at {getattr(defaults, name)!r})"
                )
    low, high = cfg.data.aspect_range
    if low > high:
        raise ConfigError(
            f"config key 'data.aspect_range' must be (low, high) with low <= high, got {[low, high]}"
        )
    low, high = cfg.data.scale_range
    if low > high:
        raise ConfigError(
            f"config key 'data.scale_range' must be (low, high) with low <= high, got {[low, high]}"
        )


# -- renamed keys ------------------------------------------------------------------------------------
RENAMED_KEYS: dict[str, str] = {
    "train.warmup_iters": "train.lr_warmup_iters",
    "model.contrast.warmup_iters": "model.contrast.start_iter",
    "model.protoseg.ppc_weight": "model.protoseg.proto_contrast_weight",
    "model.protoseg.ppd_weight": "model.protoseg.proto_distance_weight",
}
"""Old key -> new key of configs written before the method registry (read under the new name)."""


def _pop_dotted(tree: dict[str, Any], dotted_key: str) -> tuple[bool, Any]:
    *parents, last = dotted_key.split(".")
    node = tree
    for part in parents:
        node = node.get(part)
        if not isinstance(node, dict):
            return False, None
    if last not in node:
        return False, None
    return True, node.pop(last)


def _has_dotted(tree: dict[str, Any], dotted_key: str) -> bool:
    node: Any = tree
    for part in dotted_key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def migrate_legacy_keys(values: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Rename the keys of configs written before ``model.method`` (in place; returns ``values``).

    ``model.head: X`` and ``model.wsss: Y`` become ``model.method`` (Y when set, else X); the keys of
    :data:`RENAMED_KEYS` move to their new names. Each rename is reported once as a
    :class:`ConfigKeyWarning` naming what to write instead; giving both an old and its new key is an error.
    """
    renamed: list[str] = []
    model = values.get("model")
    if isinstance(model, dict) and ("head" in model or "wsss" in model):
        if "method" in model:
            raise ConfigError(f"{source}: give model.method only (model.head / model.wsss are its old names)")
        head, wsss = model.pop("head", None), model.pop("wsss", None)
        model["method"] = wsss or head or "linear"
        renamed.append(f"model.method: {model['method']} (for model.head / model.wsss)")
    for old, new in RENAMED_KEYS.items():
        present, value = _pop_dotted(values, old)
        if not present:
            continue
        if _has_dotted(values, new):
            raise ConfigError(f"{source}: give {new} only ({old} is its old name)")
        _set_dotted(values, new, value)
        renamed.append(f"{new} (for {old})")
    if renamed:
        warnings.warn(
            f"{source} uses renamed keys; write " + "; ".join(renamed), ConfigKeyWarning, stacklevel=3
        )
    return values


# -- files and overrides -----------------------------------------------------------------------------
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
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        problem = str(error).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem})") from None
    return key, value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``: mappings merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        problem = str(error).replace("\n", " ")
        raise ConfigError(f"config file {path} is not valid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} cannot be read: {error}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return loaded or {}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The values of a YAML config file, its ``_base_`` merged under it (one level)."""
    path = Path(path)
    values = _read_yaml(path)
    base_name = values.pop("_base_", None)
    if base_name is None:
        return values
    if not isinstance(base_name, str):
        raise ConfigError(f"config file {path}: _base_ must be a file name, got {base_name!r}")
    base_path = path.parent / base_name
    base = _read_yaml(base_path)
    if "_base_" in base:
        raise ConfigError(
            f"config file {base_path} (the _base_ of {path}) has a _base_ itself: one level only"
        )
    return _merge(base, values)


def config_from_dict(values: dict[str, Any], source: str = "config") -> Config:
    """A validated :class:`Config` from nested values (old key names are migrated, with a warning)."""
    values = migrate_legacy_keys(_merge({}, values), source)
    cfg = _build(Config, values)
    _check_relations(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults), apply ``key=value`` overrides, validate.

    An error names the override that caused it, or the file.
    """
    values: dict[str, Any] = {}
    source = str(path) if path is not None else "the defaults"
    if path is not None:
        values = read_config_file(path)
    parsed = [(text, *parse_override(text)) for text in overrides or []]
    values = migrate_legacy_keys(values, source)
    override_keys = {}
    for text, key, value in parsed:
        if key in RENAMED_KEYS:
            warnings.warn(
                f"override {text!r} uses a renamed key; write {RENAMED_KEYS[key]}=...",
                ConfigKeyWarning,
                stacklevel=2,
            )
            key = RENAMED_KEYS[key]
        if key in ("model.head", "model.wsss"):
            raise ConfigError(f"override {text!r}: write model.method=... ({key} is its old name)")
        _set_dotted(values, key, value)
        override_keys[key] = text
    try:
        return config_from_dict(values, source)
    except ConfigError as error:
        message = str(error)
        for key, text in override_keys.items():
            if f"'{key}'" in message or f"'{key}." in message or f"'{key}[" in message:
                raise ConfigError(f"{message} (from the override {text!r})") from None
        raise ConfigError(f"{message} in {source}") from None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config (bases merged, overrides applied) as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
