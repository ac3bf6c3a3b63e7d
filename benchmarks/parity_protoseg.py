"""ProtoSeg parity: the released head and protoseg's head trained side by side in protoseg's trainer.

The released implementation (github tfzhou/ProtoSeg) is loaded from a checkout given by path, never
copied here::

    # once: the released code, outside this repository (the library's fetch: github:tfzhou/ProtoSeg)
    export PROTOSEG_RELEASED_PROTOSEG=/path/to/ProtoSeg      # needs `pip install einops`
    python benchmarks/parity_protoseg.py train --data data/shapes --out runs/parity \
        --heads released protoseg --seeds 0 1 2 [--iterations 400] [--set KEY=VALUE ...]
    python benchmarks/parity_protoseg.py losses              # loss-level check on the same tensors

``train`` runs ``configs/shapes/protoseg.yaml --set model.protoseg.init=random`` (K = 10, the paper's
random prototypes) once per head and seed, in protoseg's trainer; only the head and its criterion
differ (the released one is registered as the method ``released_protoseg``):

- ``released``: the release's own modules and functions, bound to the benchmark's width D: its
  ``cls_head`` (3x3 conv, ``ModuleHelper.BNReLU``, Dropout2d(0.1)), its ``ProjectionHead`` (with the
  width-axis ``l2_normalize``), LayerNorms ``feat_norm`` / ``mask_norm``, the prototype parameter
  (trunc-normal std 0.02), and ``HRNet_W48_Proto.forward`` / ``prototype_learning`` called unbound on
  it (the Sinkhorn with the Gumbel draw, the momentum update); the criterion is the release's
  ``PixelPrototypeCELoss`` (CE + 0.01 PPC + 0.001 PPD, ignore label 255).
- ``protoseg`` (or any name given with ``--variant NAME:KEY=VALUE,...``): protoseg's own head and loss
  from the config, with the overrides.

Each run writes its own run folder; the script prints the val mIoU trajectories side by side, mean and
std over seeds per iteration, and writes ``summary.json``.

``losses`` builds one batch of embeddings / labels / prototypes and compares protoseg's PPC, PPD,
Sinkhorn assignment and momentum update (argmax assignment) against the released functions on the
same tensors.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ENV_VAR = "PROTOSEG_RELEASED_PROTOSEG"
IGNORE_INDEX = 255


# -- the released code, loaded from its checkout -----------------------------------------------------
def load_released(path: str | None = None) -> types.SimpleNamespace:
    """Import the released modules the harness uses from the checkout at ``path`` (or $ENV_VAR).

    The backbone selector and HANet modules that ``lib/models/nets/hrnet.py`` imports are replaced by
    empty stand-ins (their code pulls every backbone of the release and is not used here).
    """
    root = Path(path or os.environ.get(ENV_VAR, ""))
    if not (root / "lib" / "models" / "nets" / "hrnet.py").is_file():
        raise SystemExit(
            f"set {ENV_VAR} (or --released) to a checkout of github.com/tfzhou/ProtoSeg; got '{root}'"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    for name, attribute in (
        ("lib.models.backbones.backbone_selector", "BackboneSelector"),
        ("lib.models.modules.hanet_attention", "HANet_Conv"),
    ):
        stub = types.ModuleType(name)
        setattr(stub, attribute, object)
        sys.modules.setdefault(name, stub)
    hrnet = importlib.import_module("lib.models.nets.hrnet")
    contrast = importlib.import_module("lib.models.modules.contrast")
    sinkhorn = importlib.import_module("lib.models.modules.sinkhorn")
    module_helper = importlib.import_module("lib.models.tools.module_helper")
    loss_proto = importlib.import_module("lib.loss.loss_proto")
    return types.SimpleNamespace(
        HRNet_W48_Proto=hrnet.HRNet_W48_Proto,
        ProjectionHead=contrast.ProjectionHead,
        momentum_update=contrast.momentum_update,
        l2_normalize=contrast.l2_normalize,
        distributed_sinkhorn=sinkhorn.distributed_sinkhorn,
        ModuleHelper=module_helper.ModuleHelper,
        PPC=loss_proto.PPC,
        PPD=loss_proto.PPD,
        PixelPrototypeCELoss=loss_proto.PixelPrototypeCELoss,
    )


class ReleasedConfiger:
    """The few ``configer.get`` / ``exists`` answers the released head and loss ask for."""

    def __init__(self, values: dict[tuple[str, ...], object]) -> None:
        self.values = values

    def get(self, *keys):
        return self.values[tuple(keys)]

    def exists(self, *keys) -> bool:
        return tuple(keys) in self.values


def released_configer(num_classes: int, num_prototypes: int, gamma: float, ppc: float, ppd: float):
    return ReleasedConfiger(
        {
            ("protoseg", "gamma"): gamma,
            ("protoseg", "num_prototype"): num_prototypes,
            ("protoseg", "use_prototype"): True,
            ("protoseg", "update_prototype"): True,
            ("protoseg", "pretrain_prototype"): False,
            ("protoseg", "loss_ppc_weight"): ppc,
            ("protoseg", "loss_ppd_weight"): ppd,
            ("protoseg", "use_rmi"): False,
            ("data", "num_classes"): num_classes,
            ("network", "bn_type"): "torchbn",
            ("loss", "params"): {"ce_ignore_index": IGNORE_INDEX},
        }
    )


class _FeaturesAsLevels(nn.Module):
    """Stands in for the release's HRNet: hands the decoder features to ``HRNet_W48_Proto.forward`` as
    four channel groups of one resolution, which that forward concatenates back unchanged."""

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return list(features.tensor_split(4, dim=1))


class ReleasedProtoSegHead(nn.Module):
    """The released ProtoSeg head at width ``in_channels`` behind protoseg's head contract.

    ``forward(features (B, D, h, w), target (B, H, W) | None)`` -> ``{"logits", "released"}``: logits
    ``(B, C, h, w)``, and in training the release's ``{'seg', 'logits', 'target'}`` dict for its loss.
    """

    def __init__(self, released, in_channels: int, num_classes: int, num_prototypes: int, gamma: float):
        super().__init__()
        self.released = released
        proto = released.HRNet_W48_Proto
        self.impl = proto.__new__(proto)
        nn.Module.__init__(self.impl)
        impl = self.impl
        impl.configer = released_configer(num_classes, num_prototypes, gamma, 0.0, 0.0)
        impl.gamma = gamma
        impl.num_prototype = num_prototypes
        impl.use_prototype = True
        impl.update_prototype = True
        impl.pretrain_prototype = False
        impl.num_classes = num_classes
        impl.backbone = _FeaturesAsLevels()
        impl.cls_head = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1),
            released.ModuleHelper.BNReLU(in_channels, bn_type="torchbn"),
            nn.Dropout2d(0.10),
        )
        impl.prototypes = nn.Parameter(torch.zeros(num_classes, num_prototypes, in_channels))
        impl.proj_head = released.ProjectionHead(in_channels, in_channels)
        impl.feat_norm = nn.LayerNorm(in_channels)
        impl.mask_norm = nn.LayerNorm(num_classes)
        nn.init.trunc_normal_(impl.prototypes, std=0.02)
        self.num_classes = num_classes

    def forward(self, features: torch.Tensor, target: torch.Tensor | None = None) -> dict:
        gt = target.unsqueeze(1) if (self.training and target is not None) else None
        out = self.released.HRNet_W48_Proto.forward(self.impl, features, gt_semantic_seg=gt)
        if isinstance(out, dict):
            return {"logits": out["seg"], "released": out}
        return {"logits": out}


class ReleasedProtoSegLoss(nn.Module):
    """The release's ``PixelPrototypeCELoss`` behind protoseg's criterion contract."""

    def __init__(self, released, ppc_weight: float, ppd_weight: float) -> None:
        super().__init__()
        # the loss reads only its weights and the ignore label from the configer
        configer = released_configer(0, 1, 0.0, ppc_weight, ppd_weight)
        self.loss = released.PixelPrototypeCELoss(configer=configer)

    def forward(self, outputs: dict, target: torch.Tensor, iteration: int = 0) -> dict:
        loss = self.loss(outputs.get("released", outputs["logits"]), target)
        return {"loss": loss, "ce": loss.detach()}


# -- training side by side ---------------------------------------------------------------------------
def register_released_method(released) -> None:
    """Add ``model.method: released_protoseg`` to protoseg's methods: protoseg's backbone and decoder
    (from the config) with the released head and loss on top, K and gamma from ``model.protoseg``."""
    from protoseg.methods import SegmentationMethod, register
    from protoseg.methods.base import build_segmentor

    class ReleasedProtoSegMethod(SegmentationMethod):
        name = "released_protoseg"
        reads = ("protoseg",)

        def __init__(self, network, criterion) -> None:
            super().__init__()
            self.network = network
            self.criterion = criterion

        @classmethod
        def from_config(cls, model, dataset, seed: int = 0):
            classes = cls.output_classes(dataset)
            p = model.protoseg

            def head(decoder) -> nn.Module:
                return ReleasedProtoSegHead(
                    released, decoder.out_channels, classes, p.num_prototypes, p.momentum
                )

            network = build_segmentor(model, classes, head)
            return cls(
                network, ReleasedProtoSegLoss(released, p.proto_contrast_weight, p.proto_distance_weight)
            )

        def forward(self, batch, iteration: int = 0) -> dict:
            return self.criterion(self.network(batch["image"], batch["mask"]), batch["mask"], iteration)

    register(ReleasedProtoSegMethod)


def parse_variants(items: list[str]) -> dict[str, list[str]]:
    variants: dict[str, list[str]] = {"released": ["model.method=released_protoseg"], "protoseg": []}
    for item in items:
        name, _, settings = item.partition(":")
        variants[name] = [s for s in settings.split(",") if s]
    return variants


def val_trajectory(run_dir: Path) -> dict[int, float]:
    points = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "val":
            points[int(record["iteration"])] = float(record["mIoU"])
    return points


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
                "model.protoseg.init=random",
                f"data.root={args.data}",
                f"train.iterations={args.iterations}",
                f"train.seed={seed}",
                f"train.val_interval={args.val_interval}",
                f"train.checkpoint_interval={args.val_interval}",
                *args.set,
                *variants[head],
            ]
            if (
                not (run_dir / "metrics.jsonl").is_file()
                or not args.skip_done
                or not _finished(run_dir, args.iterations)
            ):
                cfg = load_config(args.config, overrides)
                trainer = Trainer(cfg, run_dir, overwrite=True, progress=False)
                try:
                    trainer.train()
                finally:
                    trainer.close()
            results.setdefault(head, {})[seed] = val_trajectory(run_dir)
            print(
                f"{head} seed {seed}: " + " ".join(f"{v:.2f}" for v in results[head][seed].values()),
                flush=True,
            )
    print_table(results)
    (out / "summary.json").write_text(json.dumps(summarise(results), indent=2))


def _finished(run_dir: Path, iterations: int) -> bool:
    return iterations in val_trajectory(run_dir)


def summarise(results: dict[str, dict[int, dict[int, float]]]) -> dict:
    summary = {}
    for head, by_seed in results.items():
        iterations = sorted(set.intersection(*(set(t) for t in by_seed.values())))
        summary[head] = {
            str(it): {
                "mean": statistics.fmean(by_seed[s][it] for s in by_seed),
                "std": statistics.stdev([by_seed[s][it] for s in by_seed]) if len(by_seed) > 1 else 0.0,
                "seeds": {str(s): by_seed[s][it] for s in by_seed},
            }
            for it in iterations
        }
    return summary


def print_table(results: dict[str, dict[int, dict[int, float]]]) -> None:
    summary = summarise(results)
    iterations = sorted({int(it) for head in summary.values() for it in head})
    print("\nval mIoU (%), mean ± std over seeds")
    print("| head | " + " | ".join(f"it {it}" for it in iterations) + " |")
    print("|---|" + "---|" * len(iterations))
    for head, rows in summary.items():
        cells = [
            f"{rows[str(it)]['mean']:.2f} ± {rows[str(it)]['std']:.2f}" if str(it) in rows else ""
            for it in iterations
        ]
        print(f"| {head} | " + " | ".join(cells) + " |")


# -- loss-level parity ---------------------------------------------------------------------------------
def command_losses(args: argparse.Namespace) -> None:
    from protoseg.losses.protoseg import pixel_prototype_contrast_loss, pixel_prototype_distance_loss
    from protoseg.ops.sinkhorn import segmented_sinkhorn

    released = load_released(args.released)
    generator = torch.Generator().manual_seed(0)
    classes, prototypes_per_class, dim, pixels = 6, 5, 32, 2000
    embeddings = F.normalize(torch.randn(pixels, dim, generator=generator), dim=1)
    prototypes = F.normalize(torch.randn(classes, prototypes_per_class, dim, generator=generator), dim=-1)
    labels = torch.randint(0, classes, (pixels,), generator=generator)
    labels[:100] = IGNORE_INDEX
    similarities = embeddings @ prototypes.reshape(-1, dim).t()
    report = {}

    # Sinkhorn per class: the release's distributed_sinkhorn (its argmax) vs protoseg's segmented one
    per_class = similarities.view(pixels, classes, prototypes_per_class)
    valid = labels != IGNORE_INDEX
    safe = torch.where(valid, labels, 0)
    own = per_class.gather(1, safe.view(-1, 1, 1).expand(-1, 1, prototypes_per_class)).squeeze(1)
    q = segmented_sinkhorn(own, labels, classes, 0.05, 3, mask=valid)
    worst, mismatched = 0.0, 0
    for c in range(classes):
        rows = labels == c
        released_q, released_index = released.distributed_sinkhorn(own[rows].clone())
        ours = q[rows].argmax(1)
        mismatched += int((ours != released_index).sum())
        del released_q
    report["sinkhorn_argmax_mismatches"] = mismatched

    # PPC / PPD on the same logits and targets (ignored pixels: the release's label 255 vs our -1)
    targets = torch.where(valid, safe * prototypes_per_class + q.argmax(1), -1)
    released_targets = torch.where(valid, targets, IGNORE_INDEX).float()
    configer = released_configer(classes, prototypes_per_class, 0.999, 0.01, 0.001)
    ppc_released = released.PPC(configer)(similarities, released_targets)
    ppd_released = released.PPD(configer)(similarities, released_targets)
    ppc_ours = pixel_prototype_contrast_loss(similarities, targets)
    ppd_ours = pixel_prototype_distance_loss(similarities, targets)
    report["ppc"] = {"released": float(ppc_released), "protoseg": float(ppc_ours)}
    report["ppd"] = {"released": float(ppd_released), "protoseg": float(ppd_ours)}
    worst = max(abs(float(ppc_released - ppc_ours)), abs(float(ppd_released - ppd_ours)))
    report["max_abs_loss_difference"] = worst
    report["head"] = head_parity(released)
    report["prototype_update"] = update_parity(released)
    print(json.dumps(report, indent=2))
    failed = (
        mismatched
        or worst > 1e-5
        or report["head"]["max_abs_logit_difference"] > 1e-5
        or report["prototype_update"]["max_abs_prototype_difference"] > 1e-6
        or not report["prototype_update"]["targets_equal"]
    )
    if failed:
        raise SystemExit("parity check failed")


def _copy_released_weights(ours, released_head: ReleasedProtoSegHead) -> None:
    """Give protoseg's head (``projection_norm=released``, ``cls_head=True``) the released head's weights."""
    impl = released_head.impl
    pairs = {
        "cls_head.0": impl.cls_head[0],
        "cls_head.1": impl.cls_head[1][0],
        "proj.0": impl.proj_head.proj[0],
        "proj.2": impl.proj_head.proj[2],
        "feat_norm": impl.feat_norm,
        "mask_norm": impl.mask_norm,
    }
    modules = dict(ours.named_modules())
    for name, module in pairs.items():
        modules[name].load_state_dict(module.state_dict())
    with torch.no_grad():
        ours.bank.prototypes.copy_(F.normalize(impl.prototypes.detach(), dim=-1))


def head_parity(released) -> dict:
    """The released head's forward against protoseg's head with ``projection_norm: released`` and
    ``cls_head: true``, with the same weights: the logits of an eval forward."""
    from protoseg.models.heads import ProtoSegHead

    torch.manual_seed(0)
    classes, prototypes_per_class, channels = 5, 4, 16
    theirs = ReleasedProtoSegHead(released, channels, classes, prototypes_per_class, 0.999)
    ours = ProtoSegHead(channels, classes, prototypes_per_class, projection_norm="released", cls_head=True)
    with torch.no_grad():  # non-trivial normalisation statistics and affine parameters
        for module in theirs.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    _copy_released_weights(ours, theirs)
    features = torch.randn(2, channels, 12, 20)
    theirs.eval(), ours.eval()
    with torch.no_grad():
        difference = (theirs(features)["logits"] - ours(features)["logits"]).abs().max()
    return {"max_abs_logit_difference": float(difference)}


def update_parity(released) -> dict:
    """One training forward of the released head (its Gumbel draw replaced by the argmax, so the update
    is deterministic) against protoseg's head with ``assignment: argmax``: the updated prototypes and the
    PPC targets."""
    import lib.models.modules.sinkhorn as released_sinkhorn

    from protoseg.models.heads import ProtoSegHead

    torch.manual_seed(1)
    classes, prototypes_per_class, channels, gamma = 5, 4, 16, 0.9
    theirs = ReleasedProtoSegHead(released, channels, classes, prototypes_per_class, gamma)
    ours = ProtoSegHead(
        channels, classes, prototypes_per_class, momentum=gamma, projection_norm="released", cls_head=True
    )
    _copy_released_weights(ours, theirs)
    features = torch.randn(2, channels, 12, 20)
    target = torch.randint(0, classes, (2, 48, 80))
    target[:, :8] = IGNORE_INDEX
    for module in (theirs, ours):  # training forward without dropout: BatchNorm in batch mode
        module.train()
        for layer in module.modules():
            if isinstance(layer, nn.Dropout2d):
                layer.p = 0.0

    def argmax_one_hot(logits, tau=1.0, hard=False):
        return F.one_hot(logits.argmax(dim=1), logits.shape[1]).to(logits.dtype)

    original = released_sinkhorn.F.gumbel_softmax
    released_sinkhorn.F.gumbel_softmax = argmax_one_hot
    try:
        released_out = theirs(features, target)["released"]
    finally:
        released_sinkhorn.F.gumbel_softmax = original
    outputs = ours(features, target)
    before = ours.bank.prototypes.clone()
    ours.update_prototypes(outputs["prototype_update"])
    released_prototypes = F.normalize(theirs.impl.prototypes.detach(), dim=-1)
    difference = (released_prototypes - ours.bank.prototypes).abs().max()
    released_targets = released_out["target"].long()
    our_targets = torch.where(outputs["proto_targets"] >= 0, outputs["proto_targets"], IGNORE_INDEX)
    moved = int((ours.bank.prototypes != before).any(dim=-1).sum())
    return {
        "max_abs_prototype_difference": float(difference),
        "targets_equal": bool(torch.equal(released_targets, our_targets)),
        "prototypes": classes * prototypes_per_class,
        "moved": moved,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--released", help=f"checkout of the released ProtoSeg (default: ${ENV_VAR})")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the heads side by side, print the val trajectories")
    train.add_argument("--config", default="configs/shapes/protoseg.yaml")
    train.add_argument("--data", default="data/shapes")
    train.add_argument("--out", default="runs/parity_protoseg")
    train.add_argument("--heads", nargs="+", default=["released", "protoseg"])
    train.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...")
    train.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    train.add_argument("--iterations", type=int, default=400)
    train.add_argument("--val-interval", type=int, default=100)
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--skip-done", action="store_true", help="reuse finished run folders")
    train.set_defaults(func=command_train)
    losses = sub.add_parser("losses", help="PPC / PPD / Sinkhorn against the released functions")
    losses.set_defaults(func=command_losses)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
