"""What the pictures look at: a trained run (model, classes, a dataset split) and the user's picks.

``open_run`` rebuilds the model of a run folder from its checkpoint (the class names and palette
come from the checkpoint, the images from the config's dataset); the selection helpers turn
``--images`` / ``--names`` / ``--classes`` into indices with errors that name the bad value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..data.base import SegmentationDataset
from ..engine.datasets import build_split_dataset
from ..engine.device import resolve_device
from ..engine.loading import config_for, find_checkpoint, load_trained_method
from ..methods import SEGMENTATION, method_class
from ..models.heads.protoseg import ProtoSegHead


@dataclass
class TrainedRun:
    """A trained segmentor (``model``: its :class:`~protoseg.models.Segmentor`) with the classes it
    predicts and one split of its dataset."""

    run_dir: Path
    checkpoint: Path
    model: nn.Module
    cfg: Config
    class_names: list[str]
    palette: list[list[int]]
    dataset: SegmentationDataset
    split: str
    device: torch.device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def open_run(
    run_dir: str | Path,
    split: str = "val",
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    overrides: Sequence[str] | None = None,
) -> TrainedRun:
    """Load ``run_dir``'s model (``checkpoint`` or best/last) and its dataset's ``split``.

    Raises ``FileNotFoundError`` for a missing run folder / checkpoint and ``ValueError`` for a
    weakly-supervised CAM network (those are looked at with ``visualize cams``).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    cfg = config_for(run_dir, list(overrides or []))
    checkpoint = Path(checkpoint) if checkpoint else find_checkpoint(run_dir)
    if method_class(cfg.model.method).family != SEGMENTATION:
        raise ValueError(
            f"{run_dir} is a weakly-supervised CAM network (model.method={cfg.model.method}), not a "
            "segmentor: run `protoseg cam` and look at its CAMs with `protoseg visualize cams`"
        )
    torch_device = resolve_device(device)
    method, cfg, meta = load_trained_method(checkpoint, torch_device, cfg)
    dataset = build_split_dataset(cfg.data, split)
    return TrainedRun(
        run_dir=run_dir,
        checkpoint=checkpoint,
        model=method.network,
        cfg=cfg,
        class_names=list(meta["class_names"]),
        palette=[list(colour) for colour in meta["palette"]],
        dataset=dataset,
        split=split,
        device=torch_device,
    )


def prototype_head(model: nn.Module, run_dir: str | Path, command: str) -> ProtoSegHead:
    """The :class:`ProtoSegHead` of ``model`` (also inside a ProtoSeg + contrast head).

    ``ValueError`` naming the run and its head type when the model has no prototypes.
    """
    head = getattr(model, "head", None)
    if isinstance(head, ProtoSegHead):
        return head
    inner = getattr(head, "protoseg", None)
    if isinstance(inner, ProtoSegHead):
        return inner
    raise ValueError(
        f"visualize {command}: the model of {run_dir} has a {type(head).__name__} head, which has no "
        "prototypes; only runs with model.method=protoseg or protoseg_contrast can be shown this way"
    )


@torch.no_grad()
def decoder_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The segmentor's head input ``(B, Cin, h, w)`` for normalised ``images`` ``(B, 3, H, W)``."""
    return model.decoder(model.backbone(images))


def load_sample(dataset: SegmentationDataset, index: int) -> dict[str, Any]:
    """Sample ``index``: the model input ``image`` ``(1, 3, H, W)`` plus the raw ``rgb`` ``(H, W, 3)``
    uint8 and ``mask`` ``(H, W)`` uint8 used for display, and its ``name``."""
    sample = dataset[index]
    rgb, mask = dataset.load_raw(index)
    return {
        "image": sample["image"].unsqueeze(0),
        "rgb": np.asarray(rgb),
        "mask": np.asarray(mask),
        "name": sample["name"],
    }


def select_images(dataset: SegmentationDataset, count: int | None, names: str | None) -> list[int]:
    """Dataset indices from ``--names a,b`` (in that order) or else the first ``count`` images."""
    if names:
        index_by_name = {name: index for index, name in enumerate(dataset.names)}
        chosen = []
        for name in (part.strip() for part in names.split(",")):
            if not name:
                continue
            if name not in index_by_name:
                raise ValueError(f"image '{name}' is not in the {len(dataset)}-image split of {dataset.root}")
            chosen.append(index_by_name[name])
        if not chosen:
            raise ValueError(f"--names '{names}' names no image")
        return chosen
    if count is not None and count < 1:
        raise ValueError(f"--images must be >= 1, got {count}")
    return list(range(min(len(dataset), count or len(dataset))))


def parse_classes(spec: str | None, class_names: Sequence[str]) -> list[int] | None:
    """``--classes disc,3,square`` -> class indices (names case-insensitive, or integer indices);
    ``None`` when no spec is given. ``ValueError`` naming an unknown class and the valid names."""
    if not spec:
        return None
    lookup = {name.lower(): index for index, name in enumerate(class_names)}
    chosen: list[int] = []
    for part in (part.strip() for part in spec.split(",")):
        if not part:
            continue
        if part.lower() in lookup:
            index = lookup[part.lower()]
        elif part.isdigit() and int(part) < len(class_names):
            index = int(part)
        else:
            raise ValueError(
                f"unknown class '{part}' (valid: {', '.join(class_names)} or 0..{len(class_names) - 1})"
            )
        if index not in chosen:
            chosen.append(index)
    if not chosen:
        raise ValueError(f"--classes '{spec}' names no class")
    return chosen
