"""ContrastiveSeg parity: the released head and loss and protoseg's, trained side by side in protoseg's
trainer on the built-in benchmark.

The released implementation (github tfzhou/ContrastiveSeg) is loaded from a checkout given by path,
never copied here::

    export PROTOSEG_RELEASED_CONTRASTIVESEG=/path/to/ContrastiveSeg   # the library's fetch
    python benchmarks/parity_contrast.py train --data data/shapes --out runs/parity_contrast \\
        --heads released protoseg --seeds 0 1 2 [--iterations 400] [--variant NAME:KEY=VALUE,...]
    python benchmarks/parity_contrast.py losses   # the released loss against ours on the same tensors

``train`` runs ``configs/shapes/contrast.yaml`` once per head and seed; the backbone, data stream,
optimiser, schedule, contrast start (``model.contrast.start_iter``), weight, temperatures and
sampling sizes are the same:

- ``released``: protoseg's backbone, its levels concatenated at the finest resolution, then the
  release's ``HRNet_W48_CONTRAST`` head built from its own modules at the benchmark's width: the
  segmentation head (3x3 conv to the decoder width, ``ModuleHelper.BNReLU``, Dropout2d(0.1), 1x1
  classifier without bias) and ``ProjectionHead`` (``convmlp``, BatchNorm) on the concatenated levels;
  the criterion is the release's ``ContrastCELoss`` (its ``PixelContrastLoss`` with hard anchor sampling,
  ``with_embed`` from ``start_iter`` on, as its trainer does);
- ``protoseg``: ``model.method: contrast`` as configured (the projection on the decoder output by
  default), and any ``--variant NAME:KEY=VALUE,...`` of it (e.g.
  ``backbone:model.contrast.projection_input=backbone``, ``nodropout:model.contrast.classifier_dropout=0``,
  ``linear:model.method=linear``).

The release moves tensors to CUDA with ``.cuda()`` in its loss; on a machine without CUDA the harness
makes ``Tensor.cuda`` return the tensor itself (in this process only).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from parity_protoseg import ReleasedConfiger, print_table, summarise, val_trajectory  # noqa: E402

ENV_VAR = "PROTOSEG_RELEASED_CONTRASTIVESEG"
IGNORE_INDEX = 255


def load_released(path: str | None = None) -> types.SimpleNamespace:
    root = Path(path or os.environ.get(ENV_VAR, ""))
    if not (root / "lib" / "loss" / "loss_contrast.py").is_file():
        raise SystemExit(
            f"set {ENV_VAR} (or --released) to a checkout of github.com/tfzhou/ContrastiveSeg; got '{root}'"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    for name in [name for name in sys.modules if name == "lib" or name.startswith("lib.")]:
        del sys.modules[name]  # another release's "lib" package (parity_protoseg) must not shadow this one
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the release's loss calls .cuda()
    loss_contrast = importlib.import_module("lib.loss.loss_contrast")
    projection = importlib.import_module("lib.models.modules.projection")
    module_helper = importlib.import_module("lib.models.tools.module_helper")
    return types.SimpleNamespace(
        ContrastCELoss=loss_contrast.ContrastCELoss,
        PixelContrastLoss=loss_contrast.PixelContrastLoss,
        ProjectionHead=projection.ProjectionHead,
        ModuleHelper=module_helper.ModuleHelper,
    )


def released_configer(section) -> ReleasedConfiger:
    return ReleasedConfiger(
        {
            ("contrast", "temperature"): section.temperature,
            ("contrast", "base_temperature"): section.base_temperature,
            ("contrast", "max_samples"): section.max_samples,
            ("contrast", "max_views"): section.max_views,
            ("contrast", "loss_weight"): section.weight,
            ("contrast", "use_rmi"): False,
            ("network", "bn_type"): "torchbn",
            ("loss", "params"): {"ce_ignore_index": IGNORE_INDEX},
        }
    )


def concatenated_levels(levels: list[torch.Tensor]) -> torch.Tensor:
    """Every backbone level upsampled to the finest and concatenated (as the release's HRNet heads do)."""
    size = levels[0].shape[-2:]
    upsampled = [levels[0]] + [
        F.interpolate(level, size=size, mode="bilinear", align_corners=True) for level in levels[1:]
    ]
    return torch.cat(upsampled, dim=1)


class ReleasedContrastNetwork(nn.Module):
    """protoseg's backbone + the released contrast head (segmentation head and projection head)."""

    def __init__(self, released, backbone: nn.Module, width: int, num_classes: int, proj_dim: int) -> None:
        super().__init__()
        channels = sum(backbone.out_channels)
        self.backbone = backbone
        self.num_classes = num_classes
        self.cls_head = nn.Sequential(
            nn.Conv2d(channels, width, kernel_size=3, stride=1, padding=1),
            released.ModuleHelper.BNReLU(width, bn_type="torchbn"),
            nn.Dropout2d(0.10),
            nn.Conv2d(width, num_classes, kernel_size=1, stride=1, padding=0, bias=False),
        )
        self.proj_head = released.ProjectionHead(dim_in=channels, proj_dim=proj_dim, bn_type="torchbn")

    def forward(self, images: torch.Tensor, target: torch.Tensor | None = None) -> dict:
        feats = concatenated_levels(self.backbone(images))
        outputs = {"logits": self.cls_head(feats)}
        if self.training and target is not None:
            outputs["embeddings"] = self.proj_head(feats)
        return outputs

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.forward(images)["logits"]
        return F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)


def register_released_method(released) -> None:
    """Add ``model.method: released_contrast`` (reads ``model.contrast`` and the decoder width)."""
    from protoseg.methods import SegmentationMethod, register
    from protoseg.methods.base import build_backbone_from_config

    class ReleasedContrastMethod(SegmentationMethod):
        name = "released_contrast"
        reads = ("contrast",)
        find_unused_parameters = True

        def __init__(self, network: ReleasedContrastNetwork, criterion, start_iter: int) -> None:
            super().__init__()
            self.network = network
            self.criterion = criterion
            self.start_iter = start_iter

        @classmethod
        def from_config(cls, model, dataset, seed: int = 0):
            section = model.contrast
            classes = cls.output_classes(dataset)
            backbone = build_backbone_from_config(model)
            width = model.decoder.channels or sum(backbone.out_channels)
            network = ReleasedContrastNetwork(released, backbone, width, classes, section.proj_dim)
            criterion = released.ContrastCELoss(configer=released_configer(section))
            return cls(network, criterion, section.start_iter)

        def forward(self, batch, iteration: int = 0) -> dict:
            outputs = self.network(batch["image"], batch["mask"])
            preds = {"seg": outputs["logits"], "embed": outputs["embeddings"]}
            with_embed = iteration >= self.start_iter
            loss = self.criterion(preds, batch["mask"], with_embed=with_embed)
            return {"loss": loss}

    register(ReleasedContrastMethod)


def parse_variants(items: list[str]) -> dict[str, list[str]]:
    variants: dict[str, list[str]] = {"released": ["model.method=released_contrast"], "protoseg": []}
    for item in items:
        name, _, settings = item.partition(":")
        variants[name] = [s for s in settings.split(",") if s]
    return variants


def command_train(args: argparse.Namespace) -> None:
    from protoseg.config import load_config
    from protoseg.engine.trainer import Trainer

    variants = parse_variants(args.variant)
    if "released" in args.heads:
        register_released_method(load_released(args.released))
    out = Path(args.out)
    results: dict[str, dict[int, dict[int, float]]] = {}
    for head in args.heads:
        if head not in variants:
            raise SystemExit(f"unknown head '{head}' (known: {', '.join(variants)})")
        for seed in args.seeds:
            run_dir = out / f"{head}_it{args.iterations}_s{seed}"
            overrides = [
                f"data.root={args.data}",
                f"train.iterations={args.iterations}",
                f"train.seed={seed}",
                f"train.val_interval={args.val_interval}",
                f"train.checkpoint_interval={args.val_interval}",
                *args.set,
                *variants[head],
            ]
            done = (run_dir / "metrics.jsonl").is_file() and args.iterations in val_trajectory(run_dir)
            if not (args.skip_done and done):
                cfg = load_config(args.config, overrides)
                trainer = Trainer(cfg, run_dir, overwrite=True, progress=False)
                try:
                    trainer.train()
                finally:
                    trainer.close()
            results.setdefault(head, {})[seed] = val_trajectory(run_dir)
            trajectory = " ".join(f"{value:.2f}" for value in results[head][seed].values())
            print(f"{head} seed {seed}: {trajectory}", flush=True)
    print_table(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summarise(results), indent=2))


def command_losses(args: argparse.Namespace) -> None:
    """The released pixel contrast against protoseg's ``supervised_contrast`` on the anchors the
    released sampler drew (its sampling replayed with the same global-RNG state), and the two
    samplers' anchor counts per class."""
    from protoseg.config import load_config
    from protoseg.losses.pixel_contrast import supervised_contrast

    released = load_released(args.released)
    section = load_config(args.config).model.contrast
    criterion = released.PixelContrastLoss(released_configer(section))
    generator = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(2, 16, 24, 24, generator=generator), dim=1)
    labels = (
        torch.randint(0, 4, (2, 3, 3), generator=generator).repeat_interleave(8, 1).repeat_interleave(8, 2)
    )
    predictions = torch.randint(0, 4, (2, 24, 24), generator=generator)
    torch.manual_seed(0)
    released_loss = criterion(embeddings, labels, predictions)
    torch.manual_seed(0)
    anchors, anchor_labels = criterion._hard_anchor_sampling(
        embeddings.permute(0, 2, 3, 1).reshape(2, -1, 16), labels.reshape(2, -1), predictions.reshape(2, -1)
    )
    flat = torch.cat(torch.unbind(anchors, dim=1), dim=0)
    flat_labels = anchor_labels.repeat(anchors.shape[1])
    ours = supervised_contrast(flat, flat_labels, temperature=section.temperature,
                               base_temperature=section.base_temperature)  # fmt: skip
    report = {
        "anchors": int(flat.shape[0]),
        "released_loss": float(released_loss),
        "protoseg_loss_on_the_same_anchors": float(ours),
        "abs_difference": abs(float(released_loss) - float(ours)),
    }
    print(json.dumps(report, indent=2))
    if report["abs_difference"] > 1e-5:
        raise SystemExit("parity check failed")


def main(argv: list[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--released", help=f"checkout of the released ContrastiveSeg (default: ${ENV_VAR})")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the heads side by side, print the val trajectories")
    train.add_argument("--config", default="configs/shapes/contrast.yaml")
    train.add_argument("--data", default="data/shapes")
    train.add_argument("--out", default="runs/parity_contrast")
    train.add_argument("--heads", nargs="+", default=["released", "protoseg"])
    train.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...")
    train.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    train.add_argument("--iterations", type=int, default=400)
    train.add_argument("--val-interval", type=int, default=100)
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--skip-done", action="store_true", help="reuse finished run folders")
    train.set_defaults(func=command_train)
    losses = sub.add_parser("losses", help="the released pixel contrast against ours on the same anchors")
    losses.add_argument("--config", default="configs/shapes/contrast.yaml")
    losses.set_defaults(func=command_losses)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
