"""The ``protoseg`` command line: make-data, train, eval, predict, cam, seeds-eval, pseudo-label,
visualize, benchmark. Run ``protoseg COMMAND --help`` for each command's options."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch


def _device(name: str) -> torch.device:
    from .engine.device import resolve_device

    return resolve_device(name)


# -- make-data ------------------------------------------------------------------------------------
def cmd_make_data(args: argparse.Namespace) -> int:
    from .data.shapes import generate_shapes

    summary = generate_shapes(
        args.out, size=args.size, num_train=args.num_train, num_val=args.num_val, seed=args.seed
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


# -- train ----------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.trainer import Trainer

    cfg = load_config(args.config, args.set)
    run_dir = args.run_dir or str(Path("runs") / Path(args.config).stem)
    trainer = Trainer(
        cfg, run_dir, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
    )
    try:
        metrics = trainer.train()
        if trainer.context.is_main:
            print(f"run folder: {run_dir}")
            if metrics is not None:
                from .ops.metrics import format_metrics_table

                print(format_metrics_table(metrics))
    finally:
        trainer.close()
    return 0


# -- eval -----------------------------------------------------------------------------------------
TTA_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine.datasets import build_split_dataset
    from .engine.evaluator import evaluate, validation_settings
    from .engine.loading import config_for, find_checkpoint, load_trained_method
    from .ops.metrics import format_metrics_table

    target = Path(args.target)
    cfg = config_for(target, args.set)
    if args.tta:
        cfg.eval.scales = cfg.eval.scales if len(cfg.eval.scales) > 1 else TTA_SCALES
        cfg.eval.flip = True
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    elif target.is_dir():
        checkpoint = find_checkpoint(target)
    else:
        raise SystemExit("protoseg eval: give --checkpoint when evaluating a config file")
    device = _device(cfg.train.device)
    method, cfg, _ = load_trained_method(checkpoint, device, cfg)
    dataset = build_split_dataset(cfg.data, args.split)
    metrics = evaluate(method, dataset, device, validation_settings(cfg), progress=not args.json)
    metrics = {**metrics, "checkpoint": str(checkpoint), "split": args.split}
    if args.json:
        print(json.dumps(metrics, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    else:
        print(format_metrics_table(metrics))
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return 0


# -- predict --------------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.loading import load_trained_method
    from .engine.predict import collect_images, predict_files
    from .methods import SegmentationMethod

    device = _device(args.device)
    model, cfg, meta = load_trained_method(args.checkpoint, device)
    if not isinstance(model, SegmentationMethod):
        raise SystemExit(
            f"protoseg predict needs a segmentor checkpoint; {args.checkpoint} holds a weakly supervised "
            f"model.method={cfg.model.method} network: use `protoseg cam` for its CAMs"
        )
    if args.tta:
        cfg.eval.scales, cfg.eval.flip = TTA_SCALES, True
    written = predict_files(model, cfg, meta, collect_images(args.inputs), Path(args.out), device)
    for path in written:
        print(path)
    return 0


# -- WSSS stages ----------------------------------------------------------------------------------
def cmd_cam(args: argparse.Namespace) -> int:
    from .engine.datasets import build_split_dataset
    from .engine.loading import config_for, find_checkpoint, load_trained_method
    from .methods import WeaklySupervisedMethod
    from .wsss.cam_inference import run_cam_inference

    cfg = config_for(args.run_dir, args.set)
    device = _device(cfg.train.device)
    checkpoint = args.checkpoint or find_checkpoint(args.run_dir)
    method, cfg, _ = load_trained_method(checkpoint, device, cfg)
    if not isinstance(method, WeaklySupervisedMethod):
        raise SystemExit(
            f"protoseg cam: {checkpoint} holds a model.method={cfg.model.method} segmentor, not a CAM network"
        )
    dataset = build_split_dataset(cfg.data, args.split)
    summary = run_cam_inference(
        method.cams,
        dataset,
        args.out,
        scales=args.scales,
        flip=not args.no_flip,
        device=device,
        progress=not args.no_progress,
    )
    print(json.dumps(summary, default=str))
    return 0


def _index_by_name(dataset) -> dict[str, int]:
    return {name: index for index, name in enumerate(dataset.names)}


def _mask_loader(dataset):
    index_by_name = _index_by_name(dataset)

    def load(name: str):
        if name not in index_by_name:
            raise KeyError(f"CAM file '{name}' has no image of that name in the dataset split")
        return dataset.load_mask(index_by_name[name])

    return load


def cmd_seeds_eval(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.datasets import build_split_dataset
    from .wsss.seeds import evaluate_seeds, format_seed_table, parse_thresholds, plot_seed_curve

    cfg = load_config(args.config, [f"data.name={args.dataset}", f"data.root={args.data}"] + (args.set or []))
    dataset = build_split_dataset(cfg.data, args.split)
    names = sorted(p.stem for p in Path(args.cam_dir).glob("*.npz"))
    if not names:
        raise SystemExit(f"protoseg seeds-eval: no CAM files (*.npz) in {args.cam_dir}")
    result = evaluate_seeds(
        args.cam_dir,
        _mask_loader(dataset),
        names,
        dataset.num_classes,
        parse_thresholds(args.thresholds),
        class_names=list(dataset.class_names),
    )
    plot_path = Path(args.plot or Path(args.cam_dir) / "seed_curve.png")
    plot_seed_curve(result, plot_path)
    if args.json:
        print(
            json.dumps(result, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v))
        )
    else:
        print(format_seed_table(result))
        print(f"curve: {plot_path}")
    return 0


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.datasets import build_split_dataset
    from .wsss.pseudo_label import write_pseudo_labels

    cfg = load_config(args.config, (args.set or []) + ([f"data.root={args.data}"] if args.data else []))
    image_loader = None
    palette = None
    if args.data or args.crf:
        dataset = build_split_dataset(cfg.data, args.split)
        palette = dataset.palette
        if args.crf:
            index_by_name = _index_by_name(dataset)

            def image_loader(name: str):
                import numpy as np

                return np.asarray(dataset.load_image(index_by_name[name]).convert("RGB"))

    if palette is None:
        from .data.palette import voc_palette

        palette = voc_palette()
    ignore_band = None if args.no_ignore else (tuple(args.ignore_band) if args.ignore_band else "auto")
    summary = write_pseudo_labels(
        args.cam_dir,
        args.out,
        args.threshold,
        palette,
        ignore_band=ignore_band,
        crf=args.crf,
        image_loader=image_loader,
        progress=not args.no_progress,
    )
    print(json.dumps(summary, default=str))
    return 0


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protoseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-data", help="generate the built-in synthetic benchmark")
    p.add_argument("kind", choices=["shapes"])
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_data)

    p = sub.add_parser("train", help="train a segmentor or a CAM network from a YAML config")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--run-dir", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoints/last.pt")
    p.add_argument(
        "--overwrite", action="store_true", help="start again in a run folder that has checkpoints"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="mIoU of a checkpoint over a split")
    p.add_argument("target", metavar="RUN_DIR_OR_CONFIG")
    p.add_argument("--checkpoint", help="default: RUN_DIR/checkpoints/best.pt, else last.pt")
    p.add_argument("--split", default="val")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="also write the metrics JSON to this file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="write palette PNG masks and overlays for images")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tta", action="store_true")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("cam", help="multi-scale + flip CAMs of a trained CAM network, one file per image")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True)
    p.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0])
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_cam)

    p = sub.add_parser("seeds-eval", help="CAM-seed mIoU for a sweep of background thresholds")
    p.add_argument("cam_dir")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--dataset", default="voc", help="dataset format (default: voc)")
    p.add_argument("--config", help="a config whose data section to use (mean/std, num_classes)")
    p.add_argument("--split", default="train")
    p.add_argument("--thresholds", default="0:0.6:0.05", help="start:stop:step or a comma list")
    p.add_argument("--plot", help="curve PNG path (default: CAM_DIR/seed_curve.png)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_seeds_eval)

    p = sub.add_parser("pseudo-label", help="threshold CAMs into palette PNG pseudo masks")
    p.add_argument("cam_dir")
    p.add_argument("--threshold", type=float, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data", help="dataset root (palette; images for --crf)")
    p.add_argument("--config", help="a config whose data section to use")
    p.add_argument("--split", default="train")
    p.add_argument(
        "--ignore-band",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="foreground scores in [LOW, HIGH) become ignore (255)",
    )
    p.add_argument("--no-ignore", action="store_true", help="no ignore band")
    p.add_argument("--crf", action="store_true", help="dense-CRF refinement (needs a dense-CRF package)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_pseudo_label)

    for name, module_name, help_text in (
        ("visualize", "protoseg.viz.command", "pictures of what a model learned"),
        ("benchmark", "protoseg.benchmark.command", "speed / memory / scaling, side by side"),
        ("export", "protoseg.export.command", "a trained network as an ONNX / TorchScript / torch.export file"),
    ):
        try:
            module = __import__(module_name, fromlist=["add_arguments", "run"])
        except ImportError:
            continue
        p = sub.add_parser(name, help=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as error:
        if os.environ.get("PROTOSEG_DEBUG"):
            raise
        print(f"protoseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
