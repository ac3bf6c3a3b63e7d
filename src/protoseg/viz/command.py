"""``protoseg visualize``: PNG pictures of what a model learned, one subcommand per picture.

similarity   pixel-to-prototype similarity maps of each class's K prototypes (ProtoSeg Fig. 3)
exemplars    the dataset patches closest to each prototype, a grid per class
embeddings   2-D projection of pixel embeddings by class with the prototypes (ProtoSeg Fig. 5)
cams         CAM heat maps per tag, pseudo label vs ground truth
predictions  image | ground truth | prediction | error map
curves       training curves from metrics.jsonl, per-class IoU bars from an eval JSON

PNGs go to ``RUN_DIR/viz/`` (``CAM_DIR/viz/`` for cams) or ``--out DIR``; their paths are printed.
Each is written atomically; a picture never replaces one of the command's inputs, and two pictures
never share a file name (:class:`protoseg.files.OutputPlan`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..fields import argument
from ..files import OutputPlan


def _out_dir(args: argparse.Namespace, base: str) -> Path:
    return Path(args.out) if args.out else Path(base) / "viz"


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal and without ``--no-progress``."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _plan(args: argparse.Namespace, inputs=()) -> OutputPlan:
    """The command's output plan: its pictures may not replace ``inputs`` nor each other."""
    plan = OutputPlan(inputs, what="picture")
    args.output_plan = plan
    return plan


def _run_inputs(trained) -> list[Path]:
    """What a picture of a trained run reads: its checkpoint, config, log and the split's files."""
    run_dir = Path(trained.run_dir)
    return [
        trained.checkpoint,
        run_dir / "config.yaml",
        run_dir / "metrics.jsonl",
        *trained.dataset.image_paths,
        *trained.dataset.mask_paths,
    ]


def _save(figure, path: Path, args: argparse.Namespace | None = None) -> Path:
    from .canvas import save_figure

    plan = getattr(args, "output_plan", None) if args is not None else None
    if plan is not None:
        plan.claim(path)
    return save_figure(figure, path)


def _stem(name: str) -> str:
    from .canvas import file_stem

    return file_stem(name)


def _emit(paths: list[Path]) -> int:
    for path in paths:
        print(path)
    return 0


def _open(args: argparse.Namespace):
    from .run_data import open_run

    return open_run(
        args.run_dir, split=args.split, checkpoint=args.checkpoint, device=args.device, overrides=args.set
    )


# -- subcommands ------------------------------------------------------------------------------------
def run_similarity(args: argparse.Namespace) -> int:
    from .canvas import present_classes
    from .run_data import load_sample, parse_classes, prototype_head, select_images
    from .similarity import draw_similarity, similarity_maps

    trained = _open(args)
    _plan(args, _run_inputs(trained))
    head = prototype_head(trained.model, args.run_dir, "similarity")
    classes = parse_classes(args.classes, trained.class_names)
    written = []
    for index in select_images(trained.dataset, args.images, args.names):
        sample = load_sample(trained.dataset, index)
        maps = similarity_maps(trained.model, head, sample["image"])
        shown = classes or present_classes(sample["mask"], num_classes=trained.num_classes)
        if not shown:
            print(f"skipped {sample['name']}: no labelled pixel (give --classes)")
            continue
        figure = draw_similarity(
            sample["rgb"], sample["mask"], maps, shown, trained.class_names, sample["name"]
        )
        written.append(
            _save(figure, _out_dir(args, args.run_dir) / f"similarity_{_stem(sample['name'])}.png", args)
        )
    return _emit(written)


def run_exemplars(args: argparse.Namespace) -> int:
    from .exemplars import crop_exemplars, draw_exemplars, find_exemplars
    from .run_data import parse_classes, prototype_head

    trained = _open(args)
    _plan(args, _run_inputs(trained))
    head = prototype_head(trained.model, args.run_dir, "exemplars")
    classes = parse_classes(args.classes, trained.class_names) or list(range(trained.num_classes))
    exemplars = find_exemplars(
        trained.model,
        head,
        trained.dataset,
        top=args.top,
        patch=args.patch,
        max_images=args.max_images,
        progress=_progress(args),
    )
    crops, centre_labels = crop_exemplars(trained.dataset, exemplars)
    written = []
    for class_index in classes:
        figure = draw_exemplars(exemplars, crops, centre_labels, class_index, trained.class_names, args.split)
        name = _stem(trained.class_names[class_index])
        written.append(
            _save(figure, _out_dir(args, args.run_dir) / f"exemplars_{class_index:02d}_{name}.png", args)
        )
    return _emit(written)


def run_embeddings(args: argparse.Namespace) -> int:
    from ..models.heads.protoseg import ProtoSegHead
    from .embeddings import draw_embeddings, sample_pixel_embeddings
    from .projection import project_2d, require_tsne
    from .run_data import prototype_head

    trained = _open(args)
    _plan(args, _run_inputs(trained))
    try:
        head: ProtoSegHead | None = prototype_head(trained.model, args.run_dir, "embeddings")
    except ValueError:
        head = None
        print(f"{args.run_dir}: no prototypes in this model's head; plotting its decoder features")
    if args.method == "tsne":
        require_tsne()  # fail before the pass over the data when scikit-learn is missing
    sample = sample_pixel_embeddings(
        trained.model,
        trained.dataset,
        trained.num_classes,
        pixels=args.pixels,
        head=head,
        max_images=args.max_images,
        generator=torch.Generator().manual_seed(args.seed),
        progress=_progress(args),
    )
    projection = project_2d(sample.embeddings, sample.prototypes, method=args.method, seed=args.seed)
    prototypes = "" if sample.prototypes is None else f", stars: the {sample.prototypes.shape[0]} prototypes"
    title = (
        f"{sample.space} of '{args.split}' ({args.method.upper()}): {sample.embeddings.shape[0]} pixels "
        f"from {sample.num_images} images{prototypes}"
    )
    figure = draw_embeddings(sample, projection, trained.class_names, trained.palette, title)
    path = _out_dir(args, args.run_dir) / f"embeddings_{_stem(args.split)}_{args.method}.png"
    return _emit([_save(figure, path, args)])


def run_cams(args: argparse.Namespace) -> int:
    from ..data import build_dataset
    from ..wsss.cam_inference import cam_path, load_cam
    from .cams import cam_class_names, cam_names, draw_cams, read_label_png

    names = cam_names(args.cam_dir)
    if args.pseudo and not Path(args.pseudo).is_dir():
        raise FileNotFoundError(f"pseudo-label folder not found: {args.pseudo}")
    dataset = build_dataset(args.dataset, args.data, args.split)
    pseudo_files = list(Path(args.pseudo).glob("*.png")) if args.pseudo else []
    _plan(args, [*dataset.image_paths, *dataset.mask_paths, *Path(args.cam_dir).glob("*.npz"), *pseudo_files])
    index_by_name = {name: index for index, name in enumerate(dataset.names)}
    if args.names:
        chosen = [name.strip() for name in args.names.split(",") if name.strip()]
        for name in chosen:
            if name not in names:
                raise ValueError(f"no CAM file {cam_path(args.cam_dir, name)}")
    else:
        if args.images < 1:
            raise ValueError(f"--images must be >= 1, got {args.images}")
        chosen = names[: args.images]
    class_names = list(dataset.class_names)
    cam_classes = cam_class_names(class_names, dataset.has_background)
    written = []
    for name in chosen:
        if name not in index_by_name:
            raise ValueError(
                f"CAM file {cam_path(args.cam_dir, name)} has no image of that name in the "
                f"'{args.split}' split of {args.data}"
            )
        record = load_cam(cam_path(args.cam_dir, name))
        if record.num_classes != len(cam_classes):
            raise ValueError(
                f"{cam_path(args.cam_dir, name)} has CAMs over {record.num_classes} classes, but the "
                f"{args.dataset} dataset at {args.data} has {len(cam_classes)} CAM classes"
            )
        rgb, truth = dataset.load_raw(index_by_name[name])
        rgb = np.asarray(rgb)
        if record.size != truth.shape:
            raise ValueError(
                f"{cam_path(args.cam_dir, name)}: CAM size {record.size} != image size {truth.shape}"
            )
        pseudo = None
        if args.pseudo:
            pseudo = read_label_png(Path(args.pseudo) / f"{name}.png")
            if pseudo.shape != truth.shape:
                raise ValueError(f"pseudo label of '{name}' is {pseudo.shape}, its image {truth.shape}")
        figure = draw_cams(rgb, record, cam_classes, name, truth, pseudo, class_names, dataset.palette)
        written.append(_save(figure, _out_dir(args, args.cam_dir) / f"cam_{_stem(name)}.png", args))
    return _emit(written)


def run_predictions(args: argparse.Namespace) -> int:
    from .predictions import draw_prediction, predict_labels
    from .run_data import load_sample, select_images

    trained = _open(args)
    _plan(args, _run_inputs(trained))
    written = []
    for index in select_images(trained.dataset, args.images, args.names):
        sample = load_sample(trained.dataset, index)
        prediction = predict_labels(trained.model, trained.cfg, sample["image"], trained.num_classes)
        figure = draw_prediction(
            sample["rgb"], sample["mask"], prediction, trained.class_names, trained.palette, sample["name"]
        )
        written.append(
            _save(figure, _out_dir(args, args.run_dir) / f"prediction_{_stem(sample['name'])}.png", args)
        )
    return _emit(written)


def run_curves(args: argparse.Namespace) -> int:
    from .curves import draw_curves, draw_per_class_iou, read_eval_json, read_metrics_log

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    out_dir = _out_dir(args, args.run_dir)
    _plan(
        args,
        [run_dir / "metrics.jsonl", run_dir / "config.yaml", *([args.eval_json] if args.eval_json else [])],
    )
    records = read_metrics_log(run_dir / "metrics.jsonl")
    written = [_save(draw_curves(records, f"training curves: {run_dir}"), out_dir / "curves.png", args)]
    if args.eval_json:
        metrics = read_eval_json(args.eval_json)
        written.append(_save(draw_per_class_iou(metrics), out_dir / "per_class_iou.png", args))
    return _emit(written)


# -- parser -----------------------------------------------------------------------------------------
def _run_options(parser: argparse.ArgumentParser, split: str = "val") -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder")
    parser.add_argument("--checkpoint", help="default: RUN_DIR/checkpoints/best.pt, else last.pt")
    parser.add_argument("--split", default=split, help=f"dataset split (default: {split})")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument("--out", help="output folder (default: RUN_DIR/viz)")


def _image_options(parser: argparse.ArgumentParser, default_count: int = 4) -> None:
    parser.add_argument(
        "--images",
        type=argument(int, minimum=1),
        default=default_count,
        help=f"first N images (default {default_count})",
    )
    parser.add_argument("--names", help="comma-separated image ids instead of --images")


NO_PROGRESS_HELP = "no progress bars (they are only drawn on a terminal anyway)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``visualize`` subcommands to ``parser`` (the ``protoseg visualize`` parser)."""
    parser.description = (
        "PNG pictures of what a model learned, written to RUN_DIR/viz/ (CAM_DIR/viz/ for cams) or "
        "--out DIR; the paths are printed. `protoseg visualize PICTURE --help` for each picture's options."
    )
    sub = parser.add_subparsers(dest="viz_command", required=True, metavar="PICTURE")
    commands: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
        "similarity": (run_similarity, "similarity maps of each class's prototypes, per image"),
        "exemplars": (run_exemplars, "the dataset patches closest to each prototype"),
        "embeddings": (run_embeddings, "2-D projection of pixel embeddings and prototypes"),
        "cams": (run_cams, "CAM heat maps per tag, pseudo label vs ground truth"),
        "predictions": (run_predictions, "image | ground truth | prediction | error map"),
        "curves": (run_curves, "training curves and per-class IoU bars"),
    }
    parsers = {}
    for name, (handler, help_text) in commands.items():
        parsers[name] = sub.add_parser(name, help=help_text, description=help_text)
        parsers[name].set_defaults(viz_handler=handler)

    p = parsers["similarity"]
    _run_options(p)
    _image_options(p)
    p.add_argument("--classes", help="comma-separated class names or indices (default: those in each image)")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    p = parsers["exemplars"]
    _run_options(p)
    p.add_argument(
        "--top", type=argument(int, minimum=1), default=8, help="patches per prototype (default 8)"
    )
    p.add_argument(
        "--patch", type=argument(int, minimum=1), default=32, help="patch side in image pixels (default 32)"
    )
    p.add_argument("--classes", help="comma-separated classes to draw a grid for (default: all)")
    p.add_argument(
        "--max-images", type=argument(int, minimum=1), help="search only the first N images of the split"
    )
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    p = parsers["embeddings"]
    _run_options(p)
    p.add_argument(
        "--pixels",
        type=argument(int, minimum=1),
        default=3000,
        help="pixels to sample, balanced over classes (default 3000)",
    )
    p.add_argument("--method", choices=("pca", "tsne"), default="pca", help="tsne needs scikit-learn")
    p.add_argument(
        "--max-images", type=argument(int, minimum=1), help="sample from the first N images of the split only"
    )
    p.add_argument("--seed", type=argument(int, minimum=0), default=0, help="seed of the pixel sampling")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    p = parsers["cams"]
    p.add_argument("cam_dir", metavar="CAM_DIR", help="the folder written by `protoseg cam`")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--dataset", default="voc", help="dataset format (default: voc)")
    p.add_argument("--split", default="train", help="the split the CAMs were computed for (default: train)")
    p.add_argument("--pseudo", help="pseudo-label folder (`protoseg pseudo-label --out`) to compare")
    _image_options(p)
    p.add_argument("--out", help="output folder (default: CAM_DIR/viz)")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    p = parsers["predictions"]
    _run_options(p)
    _image_options(p)
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    p = parsers["curves"]
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder")
    p.add_argument("--eval-json", help="output of `protoseg eval --json` or `--out`: per-class IoU bars")
    p.add_argument("--out", help="output folder (default: RUN_DIR/viz)")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``visualize`` subcommand; ``ValueError`` / ``FileNotFoundError`` on bad input."""
    return int(args.viz_handler(args))
