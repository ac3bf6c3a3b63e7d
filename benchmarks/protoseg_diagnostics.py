"""Why ProtoSeg collapses from random prototypes, and what a normalisation of the projection changes.

Trains ``configs/shapes/protoseg.yaml --set model.protoseg.init=random`` (K = 10) once per
``model.protoseg.projection_norm`` and records, after chosen iterations, on a fixed probe of
validation images (eval mode):

- ``cos_other`` / ``cos_same``: mean cosine between the embeddings of pixels of different / the same
  class (the embeddings the prototypes are compared with);
- ``shared``: ``|mean_n x_n|^2`` of the unit embeddings, the share of their energy along one common
  direction (0: none; 1: every pixel the same);
- ``channel_cv``: coefficient of variation of the per-channel energy of the projected features
  before the normalisation (how unequal the channels are);
- ``predicted``: how many classes the model predicts on the probe, and ``background``: the share of
  pixels predicted as background;
- and over training: ``moved``: how many of the C x K prototypes have moved at least once, and
  ``classes_moved``: of how many classes.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/protoseg_diagnostics.py --data data/shapes \\
        --out runs/diagnostics --norms none released batch instance spatial_rms batch_rms --iterations 200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from protoseg.config import load_config
from protoseg.engine.hooks import HookBase
from protoseg.engine.trainer import Trainer
from protoseg.ops.labels import IGNORE_INDEX, resize_labels


class ProbeHook(HookBase):
    """Records the statistics of the module docstring after the iterations in ``at``."""

    def __init__(self, probe: dict, at: set[int], generator_seed: int = 0) -> None:
        self.probe = probe
        self.at = at
        self.records: list[dict] = []
        self.moved: torch.Tensor | None = None
        self.previous: torch.Tensor | None = None
        self.seed = generator_seed

    def before_train(self) -> None:
        bank = self.trainer.method.network.head.bank
        self.previous = bank.prototypes.clone()
        self.moved = torch.zeros(bank.num_classes, bank.num_prototypes, dtype=torch.bool)
        self.records.append(self.measure(0))

    def after_step(self) -> None:
        bank = self.trainer.method.network.head.bank
        changed = (bank.prototypes != self.previous).any(dim=-1)
        self.moved |= changed.cpu()
        self.previous = bank.prototypes.clone()
        if self.trainer.iteration in self.at:
            self.records.append(self.measure(self.trainer.iteration))

    @torch.no_grad()
    def measure(self, iteration: int) -> dict:
        method = self.trainer.method
        network = method.network
        head = network.head
        was_training = method.training
        method.eval()
        images, masks = self.probe["image"], self.probe["mask"]
        features = network.decoder(network.backbone(images))
        projected = head.proj(head.cls_head(features))
        embeddings = head.embed(features)
        logits = network.head(features)["logits"]
        method.train(was_training)
        batch, _, height, width = features.shape
        labels = resize_labels(masks, (height, width)).reshape(-1)
        keep = labels != IGNORE_INDEX
        x, y = embeddings[keep], labels[keep]
        generator = torch.Generator().manual_seed(self.seed)
        first = torch.randint(0, len(x), (4000,), generator=generator)
        second = torch.randint(0, len(x), (4000,), generator=generator)
        cosine = (x[first] * x[second]).sum(dim=1)
        same = y[first] == y[second]
        energy = projected.pow(2).mean(dim=(0, 2, 3))
        predictions = logits.argmax(dim=1).reshape(-1)
        return {
            "iteration": iteration,
            "cos_other": float(cosine[~same].mean()),
            "cos_same": float(cosine[same].mean()),
            "shared": float(x.mean(dim=0).pow(2).sum()),
            "channel_cv": float(energy.std() / energy.mean()),
            "predicted": int(predictions.unique().numel()),
            "background": float((predictions == 0).float().mean()),
            "moved": int(self.moved.sum()),
            "classes_moved": int(self.moved.any(dim=1).sum()),
        }


def probe_batch(cfg, count: int) -> dict:
    from protoseg.engine.datasets import build_split_dataset

    dataset = build_split_dataset(cfg.data, cfg.data.val_split)
    samples = [dataset[index] for index in range(count)]
    crop = 96
    return {
        "image": torch.stack([sample["image"][:, :crop, :crop] for sample in samples]),
        "mask": torch.stack([sample["mask"][:crop, :crop] for sample in samples]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/shapes/protoseg.yaml")
    parser.add_argument("--data", default="data/shapes")
    parser.add_argument("--out", default="runs/protoseg_diagnostics")
    parser.add_argument(
        "--norms", nargs="+", default=["none", "released", "batch", "instance", "spatial_rms", "batch_rms"]
    )
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--at", type=int, nargs="+", default=[1, 5, 10, 25, 50, 100, 200])
    parser.add_argument("--probe-images", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results = {}
    for norm in args.norms:
        overrides = [
            "model.protoseg.init=random",
            f"model.protoseg.projection_norm={norm}",
            f"data.root={args.data}",
            f"train.iterations={args.iterations}",
            f"train.seed={args.seed}",
            f"train.val_interval={args.iterations}",
            "train.checkpoint_interval=0",
            *args.set,
        ]
        cfg = load_config(args.config, overrides)
        trainer = Trainer(cfg, out / norm, overwrite=True, progress=False)
        hook = ProbeHook(probe_batch(cfg, args.probe_images), set(args.at))
        hook.trainer = trainer
        trainer.hooks.insert(0, hook)
        try:
            metrics = trainer.train()
        finally:
            trainer.close()
        results[norm] = {"records": hook.records, "val_mIoU": metrics["mIoU"] if metrics else None}
        print(f"\n{norm}: val mIoU {results[norm]['val_mIoU']:.2f}", flush=True)
        for record in hook.records:
            print(
                "  "
                + "  ".join(
                    f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
                    for key, value in record.items()
                ),
                flush=True,
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnostics.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
