"""The ``protoseg`` command line: make-data, train, eval, predict, cam, seeds-eval, pseudo-label,
visualize, benchmark. Run ``protoseg COMMAND --help`` for each command's options."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path

import torch

from .fields import argument
from .ops.inference import TTA_SCALES


def _device(name: str) -> torch.device:
    from .engine.device import resolve_device

    return resolve_device(name)


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal and without ``--no-progress`` (no ``\\r`` noise in log files)."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _json_default(value):
    return None if isinstance(value, float) and math.isnan(value) else str(value)


# -- make-data ------------------------------------------------------------------------------------
MAKE_DATA_MARKER = ".protoseg-make-data"
"""Written into ``--out`` before anything else: the folder is make-data's (also when it was interrupted)."""


def check_make_data_folder(out: Path, overwrite: bool) -> None:
    """``make-data`` writes into a new or empty folder, or (with ``overwrite``) over a dataset it wrote
    before (its marker or ``shapes_meta.json``; also an interrupted one); any other folder with files is
    refused, so that no user file is replaced (a VOC root's lists, for one)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not ((out / "shapes_meta.json").is_file() or (out / MAKE_DATA_MARKER).is_file()):
        raise FileExistsError(
            f"--out {out} is not empty and holds no make-data dataset; choose a new or empty folder"
        )
    if not overwrite:
        raise FileExistsError(
            f"--out {out} already holds a shapes dataset; pass --overwrite to write it again, "
            "or choose another folder"
        )


def cmd_make_data(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .data.shapes import generate_shapes
    from .files import atomic_write_text

    out = Path(args.out)
    check_make_data_folder(out, args.overwrite)
    atomic_write_text(out / MAKE_DATA_MARKER, "written by protoseg make-data\n")
    with tqdm(total=args.num_train + args.num_val, desc="make-data", disable=not _progress(args)) as bar:
        summary = generate_shapes(
            out,
            size=args.size,
            num_train=args.num_train,
            num_val=args.num_val,
            seed=args.seed,
            progress=lambda done, total: bar.update(1),
        )
    if args.saliency is not None:
        from .data.saliency import write_synthetic_saliency

        summary["saliency"] = write_synthetic_saliency(out, quality=args.saliency, seed=args.seed)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(
            f"wrote {summary['num_train']} training and {summary['num_val']} validation images "
            f"({summary['size']}x{summary['size']}, {len(summary['class_names'])} classes with background) "
            f"to {out} in {summary['seconds']:.1f} s"
        )
    return 0


# -- train ----------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.trainer import Trainer

    cfg = load_config(args.config, args.set)
    run_dir = args.run_dir or str(Path("runs") / Path(args.config).stem)
    trainer = Trainer(
        cfg,
        run_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        change_config=args.change_config,
    )
    try:
        metrics = trainer.train()
    except BaseException:
        trainer.close(failed=True)  # never wait for the other ranks: they may wait for this one
        raise
    trainer.close()
    if trainer.context.is_main:
        print(f"run folder: {run_dir}")
        if metrics is not None:
            from .ops.metrics import format_metrics_table

            print(format_metrics_table(metrics))
    return 0


# -- eval -----------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine.datasets import build_split_dataset
    from .engine.evaluator import evaluate, validation_settings
    from .engine.loading import config_for, find_checkpoint, load_trained_method
    from .files import OutputPlan, atomic_write_text
    from .ops.metrics import format_metrics_table

    target = Path(args.target)
    cfg = config_for(target, args.set)
    if args.tta:
        cfg.eval.scales = cfg.eval.scales if len(cfg.eval.scales) > 1 else list(TTA_SCALES)
        cfg.eval.flip = True
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    elif target.is_dir():
        checkpoint = find_checkpoint(target)
    else:
        raise ValueError(f"{target} is a config file: give the checkpoint to evaluate with --checkpoint")
    device = _device(cfg.train.device)
    method, cfg, meta = load_trained_method(checkpoint, device, cfg)
    dataset = build_split_dataset(cfg.data, args.split)
    if args.out:  # never onto the checkpoint, the run's files or the data
        inputs = [checkpoint, *dataset.image_paths, *dataset.mask_paths]
        if target.is_dir():
            inputs += [target / "config.yaml", target / "metrics.jsonl"]
        OutputPlan(inputs).claim(args.out)
    iteration = meta.get("iteration")
    where = f"{checkpoint} (iteration {iteration})" if iteration is not None else str(checkpoint)
    if not args.json:
        print(f"evaluating {where} on split '{args.split}' ({len(dataset)} images)", flush=True)
    progress = _progress(args) and not args.json
    metrics = evaluate(method, dataset, device, validation_settings(cfg), progress=progress)
    metrics = {**metrics, "checkpoint": str(checkpoint), "iteration": iteration, "split": args.split}
    if args.json:
        print(json.dumps(metrics, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    else:
        print(format_metrics_table(metrics))
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics, indent=2))
    return 0


# -- predict --------------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.loading import load_trained_method
    from .engine.predict import collect_images, predict_files
    from .methods import SegmentationMethod

    device = _device(args.device)
    model, cfg, meta = load_trained_method(args.checkpoint, device)
    if not isinstance(model, SegmentationMethod):
        raise ValueError(
            f"predict needs a segmentor checkpoint; {args.checkpoint} holds a weakly supervised "
            f"model.method={cfg.model.method} network: use `protoseg cam` for its CAMs"
        )
    if args.tta:
        cfg.eval.scales, cfg.eval.flip = list(TTA_SCALES), True
    images = collect_images(args.inputs)
    written = predict_files(
        model, cfg, meta, images, Path(args.out), device, inputs=[args.checkpoint], progress=_progress(args)
    )
    for path in written:
        print(path)
    return 0


# -- WSSS stages ----------------------------------------------------------------------------------
def cmd_cam(args: argparse.Namespace) -> int:
    from .engine.datasets import build_split_dataset
    from .engine.loading import config_for, find_checkpoint, load_trained_method
    from .files import OutputPlan
    from .methods import WeaklySupervisedMethod
    from .wsss.cam_inference import cam_path, run_cam_inference

    cfg = config_for(args.run_dir, args.set)
    device = _device(cfg.train.device)
    checkpoint = args.checkpoint or find_checkpoint(args.run_dir)
    method, cfg, _ = load_trained_method(checkpoint, device, cfg)
    if not isinstance(method, WeaklySupervisedMethod):
        raise ValueError(f"{checkpoint} holds a model.method={cfg.model.method} segmentor, not a CAM network")
    dataset = build_split_dataset(cfg.data, args.split)
    plan = OutputPlan([checkpoint, *dataset.image_paths, *dataset.mask_paths], what="CAM file")
    for name in dataset.names:
        plan.claim(cam_path(args.out, name), source=f"image '{name}'")
    summary = run_cam_inference(
        method.cams,
        dataset,
        args.out,
        scales=args.scales,
        flip=not args.no_flip,
        device=device,
        progress=_progress(args),
    )
    print(json.dumps(summary, default=str))
    return 0


def _index_by_name(dataset) -> dict[str, int]:
    return {name: index for index, name in enumerate(dataset.names)}


def _mask_loader(dataset, names: list[str], cam_dir: str, split: str, root: str):
    """``name -> mask`` of the split; ``ValueError`` up front when CAM files name images the split lacks
    (CAMs of another split)."""
    index_by_name = _index_by_name(dataset)
    unknown = [name for name in names if name not in index_by_name]
    if unknown:
        raise ValueError(
            f"{len(unknown)} of the {len(names)} CAM files in {cam_dir} name no image of the '{split}' "
            f"split of {root} (first: '{unknown[0]}'); give the split the CAMs were computed for (--split)"
        )

    def load(name: str):
        return dataset.load_mask(index_by_name[name])

    return load


def cmd_seeds_eval(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.datasets import build_split_dataset
    from .files import OutputPlan
    from .wsss.seeds import (
        SweepEdgeWarning,
        evaluate_seeds,
        format_seed_table,
        parse_thresholds,
        plot_seed_curve,
        sweep_edge_warning,
    )

    cfg = load_config(args.config, [f"data.name={args.dataset}", f"data.root={args.data}"] + (args.set or []))
    dataset = build_split_dataset(cfg.data, args.split)
    names = sorted(p.stem for p in Path(args.cam_dir).glob("*.npz"))
    if not names:
        raise FileNotFoundError(f"no CAM files (*.npz) in {args.cam_dir}")
    thresholds = parse_thresholds(args.thresholds)
    plot_path = Path(args.plot or Path(args.cam_dir) / "seed_curve.png")
    OutputPlan([*dataset.image_paths, *dataset.mask_paths, *Path(args.cam_dir).glob("*.npz")]).claim(
        plot_path
    )
    result = evaluate_seeds(
        args.cam_dir,
        _mask_loader(dataset, names, args.cam_dir, args.split, args.data),
        names,
        dataset.num_classes,
        thresholds,
        class_names=list(dataset.class_names),
        progress=_progress(args),
    )
    edge = sweep_edge_warning(result)
    if edge:
        warnings.warn(edge, SweepEdgeWarning, stacklevel=1)
    plot_seed_curve(result, plot_path)
    if args.json:
        print(json.dumps(result, default=_json_default))
    else:
        print(format_seed_table(result))
        print(f"curve: {plot_path}")
    return 0


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.datasets import build_split_dataset
    from .files import OutputPlan
    from .wsss.pseudo_label import write_pseudo_labels

    cfg = load_config(args.config, (args.set or []) + ([f"data.root={args.data}"] if args.data else []))
    image_loader = None
    palette = None
    cam_dir = Path(args.cam_dir)
    names = sorted(str(path.relative_to(cam_dir).with_suffix("")) for path in cam_dir.rglob("*.npz"))
    plan = OutputPlan(cam_dir.rglob("*.npz"), what="pseudo label")
    if args.data or args.crf:
        dataset = build_split_dataset(cfg.data, args.split)
        plan.add_inputs([*dataset.image_paths, *dataset.mask_paths])  # never over the ground truth
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
    for name in names:
        plan.claim(Path(args.out) / f"{name}.png", source=cam_dir / f"{name}.npz")
    summary = write_pseudo_labels(
        args.cam_dir,
        args.out,
        args.threshold,
        palette,
        ignore_band=ignore_band,
        crf=args.crf,
        image_loader=image_loader,
        progress=_progress(args),
        names=names or None,
    )
    print(json.dumps(summary, default=str))
    return 0


# -- parser ---------------------------------------------------------------------------------------
NO_PROGRESS_HELP = "no progress bars (they are only drawn on a terminal anyway)"
SET_HELP = "override a config key (repeatable), e.g. --set train.iterations=100"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protoseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    positive_float = argument(float, greater_than=0.0)

    p = sub.add_parser("make-data", help="generate the built-in synthetic benchmark")
    p.add_argument("kind", choices=["shapes"], help="the dataset to generate (shapes)")
    p.add_argument("--out", required=True, help="a new or empty folder to write the dataset to")
    p.add_argument("--size", type=argument(int, minimum=32), default=128, help="image side in pixels (>= 32)")
    p.add_argument(
        "--num-train", type=argument(int, minimum=0), default=1000, help="training images (default 1000)"
    )
    p.add_argument(
        "--num-val", type=argument(int, minimum=0), default=250, help="validation images (default 250)"
    )
    p.add_argument(
        "--seed", type=argument(int, minimum=0), default=0, help="the same seed gives the same files"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="write again over a dataset make-data wrote to --out before"
    )
    p.add_argument(
        "--saliency",
        type=argument(float, minimum=0.0, maximum=1.0),
        metavar="QUALITY",
        help="also write synthetic saliency maps (SaliencyMaps/, for EPS) of this quality in [0, 1]",
    )
    p.add_argument("--json", action="store_true", help="print the full summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.set_defaults(func=cmd_make_data)

    p = sub.add_parser("train", help="train a segmentor or a CAM network from a YAML config")
    p.add_argument("config", help="the YAML config (e.g. configs/shapes/linear.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--run-dir", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoints/last.pt")
    p.add_argument(
        "--change-config",
        action="store_true",
        help="with --resume: train on with a config that differs from the checkpoint's (applied from "
        "the resumed iteration on; the previous config.yaml is kept)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="start again in a run folder that has checkpoints"
    )
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="mIoU of a checkpoint over a split")
    p.add_argument("target", metavar="RUN_DIR_OR_CONFIG", help="a run folder, or a config with --checkpoint")
    p.add_argument("--checkpoint", help="default: RUN_DIR/checkpoints/best.pt, else last.pt")
    p.add_argument("--split", default="val", help="dataset split (default: val)")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="also write the metrics JSON to this file")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="write palette PNG masks and overlays for images")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    p.add_argument("--checkpoint", required=True, help="a segmentor checkpoint (RUN_DIR/checkpoints/best.pt)")
    p.add_argument(
        "--out", required=True, help="output folder (not an input folder): <stem>.png and <stem>_overlay.jpg"
    )
    p.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("cam", help="multi-scale + flip CAMs of a trained CAM network, one file per image")
    p.add_argument("run_dir", help="the run folder of a CAM network (model.method cam, ppc or rca)")
    p.add_argument("--checkpoint", help="default: RUN_DIR/checkpoints/best.pt, else last.pt")
    p.add_argument("--split", default="train", help="dataset split (default: train)")
    p.add_argument("--out", required=True, help="folder for the <image>.npz CAM files (resumable)")
    p.add_argument(
        "--scales",
        type=positive_float,
        nargs="+",
        default=[0.5, 1.0, 1.5, 2.0],
        help="image scales, each > 0 (default: 0.5 1.0 1.5 2.0)",
    )
    p.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.set_defaults(func=cmd_cam)

    p = sub.add_parser("seeds-eval", help="CAM-seed mIoU for a sweep of background thresholds")
    p.add_argument("cam_dir", help="the folder written by `protoseg cam`")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--dataset", default="voc", help="dataset format (default: voc)")
    p.add_argument("--config", help="a config whose data section to use (mean/std, num_classes)")
    p.add_argument("--split", default="train", help="the split the CAMs were computed for (default: train)")
    p.add_argument("--thresholds", default="0:0.6:0.05", help="start:stop:step or a comma list")
    p.add_argument("--plot", help="curve PNG path (default: CAM_DIR/seed_curve.png)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.set_defaults(func=cmd_seeds_eval)

    p = sub.add_parser("pseudo-label", help="threshold CAMs into palette PNG pseudo masks")
    p.add_argument("cam_dir", help="the folder written by `protoseg cam`")
    p.add_argument(
        "--threshold",
        type=argument(float, minimum=0.0, less_than=1.0),
        required=True,
        help="background score in [0, 1) (CAMs are normalised to [0, 1)); seeds-eval finds the best",
    )
    p.add_argument("--out", required=True, help="folder for the <image>.png pseudo masks")
    p.add_argument("--data", help="dataset root (palette; images for --crf; its masks are never overwritten)")
    p.add_argument("--config", help="a config whose data section to use")
    p.add_argument("--split", default="train", help="dataset split (default: train)")
    p.add_argument(
        "--ignore-band",
        type=argument(float, minimum=0.0, maximum=1.0),
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="foreground scores in [LOW, HIGH) become ignore (255)",
    )
    p.add_argument("--no-ignore", action="store_true", help="no ignore band")
    p.add_argument("--crf", action="store_true", help="dense-CRF refinement (needs a dense-CRF package)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.set_defaults(func=cmd_pseudo_label)

    for name, module_name, help_text in (
        ("visualize", "protoseg.viz.command", "pictures of what a model learned"),
        ("benchmark", "protoseg.benchmark.command", "speed / memory / scaling, side by side"),
        (
            "export",
            "protoseg.export.command",
            "a trained network as an ONNX / TorchScript / torch.export file",
        ),
    ):
        try:
            module = __import__(module_name, fromlist=["add_arguments", "run"])
        except ImportError:
            continue
        p = sub.add_parser(name, help=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
"""Errors in what the user gave (a path, a value, a file): exit status 2, like argparse's."""

PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "ProcessGroup")


def _rank_tag() -> str:
    """`` (rank N)`` in a torchrun job of several processes, else empty."""
    return f" (rank {os.environ.get('RANK', '?')})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def describe_error(error: BaseException) -> tuple[int, str]:
    """(exit status, one-line message) for an exception that ends a command."""
    if isinstance(error, OSError) and error.strerror:
        message = error.strerror + (f": {error.filename}" if error.filename else "")
        return (2 if isinstance(error, USER_ERRORS) else 1), _one_line(message)
    if isinstance(error, USER_ERRORS):
        return 2, _one_line(error)
    if isinstance(error, KeyError):
        return 2, f"missing entry {error}"
    if isinstance(error, FloatingPointError):
        return 1, _one_line(error)
    if isinstance(error, torch.OutOfMemoryError):
        first = _one_line(str(error).split(". ")[0])
        return 1, f"out of memory ({first}); reduce train.batch_size or data.crop_size"
    if isinstance(error, MemoryError):
        return 1, "out of memory; reduce train.batch_size, data.crop_size or data.num_workers"
    first = (str(error).strip().splitlines() or [""])[0]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and any(text in str(error) for text in PEER_LOST):
        return (
            1,
            f"lost contact with another process of the job (it failed or was stopped; see its "
            f"error): {first}",
        )
    return 1, (
        f"{type(error).__name__}: {first} (an unexpected error; set PROTOSEG_DEBUG=1 to see the traceback)"
    )


def _one_line_warnings(prefix: str) -> None:
    """Warnings as ``protoseg CMD: warning: ...`` lines on stderr (no source line, no file path)."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prefix}: warning: {_one_line(message)}", file=sys.stderr, flush=True)

    warnings.showwarning = show


def _leave(code: int) -> int:
    """Return ``code``; in a failed process of a DDP job, exit at once instead: tearing the process group
    down or running finalisers could wait for peers that wait for this process."""
    import torch.distributed as dist

    if code != 0 and dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run a command; every error ends in one line ``protoseg CMD: error: ...`` on stderr (status 2 for
    bad input, 1 otherwise; ``PROTOSEG_DEBUG=1`` raises instead, with the traceback)."""
    from .engine.interrupt import TrainingInterrupted

    args = build_parser().parse_args(argv)
    prefix = f"protoseg {args.command}{_rank_tag()}"
    debug = bool(os.environ.get("PROTOSEG_DEBUG"))
    if not debug:
        _one_line_warnings(prefix)
    try:
        return _leave(int(args.func(args) or 0))
    except TrainingInterrupted as stop:
        print(f"{prefix}: {stop}", file=sys.stderr, flush=True)
        return _leave(stop.exit_code)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prefix}: interrupted", file=sys.stderr, flush=True)
        return _leave(130)
    except Exception as error:
        if debug:
            raise
        code, message = describe_error(error)
        print(f"{prefix}: error: {message}", file=sys.stderr, flush=True)
        return _leave(code)


if __name__ == "__main__":
    sys.exit(main())
