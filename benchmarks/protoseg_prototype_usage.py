"""What do a trained ProtoSeg head's K prototypes per class capture on the built-in benchmark?

Each shape class of ``protoseg make-data shapes`` comes in 3 appearance modes (filled / outlined /
striped / dotted, one left out per class) and the background in 4 (gradient / noise / stripes /
checker); ``shapes_meta.json`` records the mode of every object. This script runs trained models on
the validation split (whole images, eval mode) and, at the head's resolution, for every labelled
pixel whose appearance mode is known (its class appears in one mode in its image), records

- ``accuracy``: pixel accuracy (argmax of the logits == label) per appearance mode;
- ``margin``: ``max_k <x, p_{y,k}> - max_{c != y, k} <x, p_{c,k}>``, the cosine margin of the true
  class's nearest prototype over the nearest prototype of any other class (mean over pixels), and
  its two terms ``nearest_own`` and ``nearest_other``;
- per class, over the pixels of that class, which of its own K prototypes is nearest:
  ``effective``: ``exp(H(k))``, the effective number of prototypes in use (1 .. K), and
  ``mode_information``: ``I(k; mode) / H(mode)``, the share of the appearance mode's entropy that
  the nearest prototype explains (0: the prototypes do not split a class by appearance; 1: each
  prototype serves one mode). Both are averaged over the foreground classes, weighted by pixels,
  and given for the background (``background_effective``, ``background_mode_information``);
- ``cos_same_mode`` / ``cos_other_mode`` / ``cos_other_class``: mean cosine between the embeddings
  of two foreground pixels of the same class in the same appearance mode / of the same class in
  different modes / of different classes (a sample of 24 pixels per image,
  all pairs of the sample): whether the embedding keeps the appearance modes of a class apart at
  all, i.e. whether there is anything for more prototypes to capture;
- ``foreground_as_background`` / ``background_as_foreground``: the share of foreground pixels
  predicted as background and of background pixels predicted as a shape;
- ``miou_by_background_offset``: mIoU at the head's resolution (all labelled pixels) when a constant
  is added to the background logit, for each offset of ``BACKGROUND_OFFSETS``: how much of a gap
  between two models is a bias between background and shapes rather than the embedding;
- ``miou_mean_prototype``: mIoU at the head's resolution when each class's K prototypes are replaced
  by their normalised mean at inference (one prototype per class, the rest of the model unchanged):
  what the spread of the K prototypes adds to, or takes from, the same embedding.

So it answers whether the K = 10 prototypes of a class specialise by appearance, and where a K = 1
model gains or loses against a K = 10 one (``--runs`` takes several run folders, one row each).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/protoseg_prototype_usage.py \\
        --data data/shapes --runs runs/k10_s0 runs/k1_s0 --json runs/prototype_usage.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from protoseg.engine.datasets import build_split_dataset
from protoseg.engine.loading import config_for, find_checkpoint, load_trained_method
from protoseg.ops.labels import IGNORE_INDEX, resize_labels
from protoseg.ops.metrics import confusion_matrix, segmentation_metrics

UNKNOWN_MODE = -1
BACKGROUND_OFFSETS = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5)


def mode_vocabulary(meta: dict) -> list[str]:
    """Appearance modes, background modes prefixed ``bg:`` so the two families stay apart."""
    foreground = sorted({mode for modes in meta["settings"]["class_modes"].values() for mode in modes})
    background = sorted({f"bg:{image['background']}" for image in meta["images"].values()})
    return foreground + background


def mode_map(mask: torch.Tensor, record: dict, class_names: list[str], modes: list[str]) -> torch.Tensor:
    """``(H, W)`` int64 index into ``modes`` of every pixel, ``UNKNOWN_MODE`` where the pixel is
    ignored or its class appears in more than one mode in the image."""
    result = torch.full_like(mask, UNKNOWN_MODE)
    result[mask == 0] = modes.index(f"bg:{record['background']}")
    per_class: dict[int, set[str]] = {}
    for obj in record["objects"]:
        per_class.setdefault(class_names.index(obj["class"]), set()).add(obj["mode"])
    for label, found in per_class.items():
        if len(found) == 1:
            result[mask == label] = modes.index(next(iter(found)))
    return result


def entropy(counts: torch.Tensor) -> float:
    """Shannon entropy (nats) of a histogram."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0].double() / total
    return float(-(p * p.log()).sum())


def mutual_information(joint: torch.Tensor) -> float:
    """I(A; B) in nats of a joint histogram ``(|A|, |B|)``."""
    return entropy(joint.sum(dim=1)) + entropy(joint.sum(dim=0)) - entropy(joint.flatten())


@torch.no_grad()
def usage(run: Path, data: str, checkpoint: Path | None = None, pixels_per_image: int = 24) -> dict:
    """The statistics of the module docstring for one trained ProtoSeg run."""
    cfg = config_for(run, [f"data.root={data}"])
    method, cfg, _ = load_trained_method(checkpoint or find_checkpoint(run), torch.device("cpu"), cfg)
    network = method.network
    head = network.head
    if not hasattr(head, "bank"):
        raise ValueError(f"{run}: model.method={cfg.model.method} has no prototypes to analyse")
    root = Path(cfg.data.root)
    meta_path = root / "shapes_meta.json"
    if not meta_path.is_file():
        raise ValueError(f"{meta_path}: missing (the appearance modes come from `protoseg make-data shapes`)")
    meta = json.loads(meta_path.read_text())
    class_names = meta["settings"]["class_names"]
    modes = mode_vocabulary(meta)
    num_classes, num_prototypes = head.bank.num_classes, head.bank.num_prototypes
    dataset = build_split_dataset(cfg.data, cfg.data.val_split)
    correct = torch.zeros(len(modes), dtype=torch.float64)
    seen = torch.zeros(len(modes), dtype=torch.float64)
    own_sum, other_sum, margin_count = 0.0, 0.0, 0
    joint = torch.zeros(num_classes, num_prototypes, len(modes), dtype=torch.float64)
    prototypes = head.bank.prototypes.reshape(-1, head.bank.dim)
    generator = torch.Generator().manual_seed(0)
    confusion = torch.zeros(len(BACKGROUND_OFFSETS), num_classes, num_classes, dtype=torch.int64)
    mean_confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    mean_prototypes = torch.nn.functional.normalize(head.bank.prototypes.mean(dim=1), dim=-1)  # (C, D)
    sample_embeddings, sample_labels, sample_modes = [], [], []
    for index in range(len(dataset)):
        sample = dataset[index]
        features = network.decoder(network.backbone(sample["image"][None]))
        height, width = features.shape[-2:]
        logits = head(features)["logits"]
        embeddings = head.embed(features)
        similarities = (embeddings @ prototypes.t()).view(-1, num_classes, num_prototypes)
        labels = resize_labels(sample["mask"][None], (height, width)).reshape(-1)
        full_modes = mode_map(sample["mask"], meta["images"][sample["name"]], class_names, modes)
        pixel_modes = resize_labels(full_modes[None], (height, width)).reshape(-1)
        scores = logits.permute(0, 2, 3, 1).reshape(-1, num_classes)
        for position, offset in enumerate(BACKGROUND_OFFSETS):
            shifted = scores.clone()
            shifted[:, 0] += offset
            confusion[position] += confusion_matrix(shifted.argmax(dim=1), labels, num_classes)
        mean_scores = head.mask_norm(embeddings @ mean_prototypes.t())
        mean_confusion += confusion_matrix(mean_scores.argmax(dim=1), labels, num_classes)
        keep = (labels != IGNORE_INDEX) & (labels < num_classes) & (pixel_modes != UNKNOWN_MODE)
        labels, pixel_modes, similarities = labels[keep], pixel_modes[keep], similarities[keep]
        predictions = logits.argmax(dim=1).reshape(-1)[keep]
        correct.index_add_(0, pixel_modes, (predictions == labels).double())
        seen.index_add_(0, pixel_modes, torch.ones_like(pixel_modes, dtype=torch.float64))
        own = similarities[torch.arange(len(labels)), labels]  # (n, K)
        best_own, nearest = own.max(dim=1)
        others = similarities.amax(dim=2).scatter(1, labels[:, None], -math.inf).amax(dim=1)
        own_sum += float(best_own.sum())
        other_sum += float(others.sum())
        margin_count += len(labels)
        flat = (labels * num_prototypes + nearest) * len(modes) + pixel_modes
        joint.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
        foreground = (labels > 0).nonzero().squeeze(1)
        chosen = foreground[torch.randperm(len(foreground), generator=generator)[:pixels_per_image]]
        sample_embeddings.append(embeddings[keep][chosen])
        sample_labels.append(labels[chosen])
        sample_modes.append(pixel_modes[chosen])
    per_class = {}
    for label in range(num_classes):
        table = joint[label]
        if table.sum() == 0:
            continue
        mode_entropy = entropy(table.sum(dim=0))
        per_class[label] = (
            float(table.sum()),
            math.exp(entropy(table.sum(dim=1))),
            mutual_information(table) / mode_entropy if mode_entropy > 0 else 0.0,
        )
    foreground = [per_class[label] for label in per_class if label > 0]
    weight_sum = sum(weight for weight, _, _ in foreground)
    unshifted = confusion[BACKGROUND_OFFSETS.index(0.0)].double()
    cosines = pair_cosines(torch.cat(sample_embeddings), torch.cat(sample_labels), torch.cat(sample_modes))
    return {
        "run": str(run),
        "num_prototypes": num_prototypes,
        "projection_norm": cfg.model.protoseg.projection_norm,
        "pixel_accuracy": float(correct.sum() / seen.sum()),
        "accuracy": {mode: float(correct[i] / seen[i]) for i, mode in enumerate(modes) if seen[i] > 0},
        "margin": (own_sum - other_sum) / max(margin_count, 1),
        "nearest_own": own_sum / max(margin_count, 1),
        "nearest_other": other_sum / max(margin_count, 1),
        "effective": sum(weight * value for weight, value, _ in foreground) / weight_sum,
        "mode_information": sum(weight * value for weight, _, value in foreground) / weight_sum,
        "background_effective": per_class[0][1] if 0 in per_class else float("nan"),
        "background_mode_information": per_class[0][2] if 0 in per_class else float("nan"),
        "pixels": int(seen.sum()),
        **cosines,
        "foreground_as_background": float(unshifted[1:, 0].sum() / unshifted[1:].sum()),
        "background_as_foreground": float(unshifted[0, 1:].sum() / unshifted[0].sum()),
        "miou_mean_prototype": _miou(mean_confusion),
        "miou_by_background_offset": {
            str(offset): _miou(matrix) for offset, matrix in zip(BACKGROUND_OFFSETS, confusion, strict=True)
        },
    }


def _miou(confusion: torch.Tensor) -> float:
    """The trainer's mIoU (``segmentation_metrics``) of a ``(C, C)`` confusion matrix, as a fraction."""
    return segmentation_metrics(confusion)["mIoU"] / 100


def pair_cosines(embeddings: torch.Tensor, labels: torch.Tensor, modes: torch.Tensor) -> dict:
    """Mean cosine over all pairs of distinct sampled pixels ``(n, D)`` (unit rows), split into
    same class and mode / same class, other mode / other class."""
    cosine = embeddings.double() @ embeddings.double().t()
    same_class = labels[:, None] == labels[None, :]
    same_mode = modes[:, None] == modes[None, :]
    distinct = ~torch.eye(len(labels), dtype=torch.bool)
    groups = {
        "cos_same_mode": same_class & same_mode & distinct,
        "cos_other_mode": same_class & ~same_mode,
        "cos_other_class": ~same_class,
    }
    return {name: float(cosine[mask].mean()) for name, mask in groups.items()}


def best_offset(row: dict) -> tuple[str, float]:
    offset, miou = max(row["miou_by_background_offset"].items(), key=lambda item: item[1])
    return offset, 100 * miou


def table(rows: list[dict]) -> str:
    modes = list(rows[0]["accuracy"])
    header = [
        "run", "K", "pixel acc", *modes, "margin", "own", "other", "effective K", "I(k;mode)/H(mode)",
        "background: effective K", "I(k;mode)/H(mode)",
        "cos same class+mode", "cos same class, other mode", "cos other class",
        "shape -> bg", "bg -> shape", "mIoU (head res.)", "best bg offset: mIoU", "mIoU, mean prototype",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row["run"],
            str(row["num_prototypes"]),
            f"{100 * row['pixel_accuracy']:.2f}",
            *(f"{100 * row['accuracy'].get(mode, float('nan')):.2f}" for mode in modes),
            f"{row['margin']:.3f}",
            f"{row['nearest_own']:.3f}",
            f"{row['nearest_other']:.3f}",
            f"{row['effective']:.2f}",
            f"{row['mode_information']:.3f}",
            f"{row['background_effective']:.2f}",
            f"{row['background_mode_information']:.3f}",
            f"{row['cos_same_mode']:.3f}",
            f"{row['cos_other_mode']:.3f}",
            f"{row['cos_other_class']:.3f}",
            f"{100 * row['foreground_as_background']:.2f}",
            f"{100 * row['background_as_foreground']:.2f}",
            f"{100 * row['miou_by_background_offset']['0.0']:.2f}",
            "{}: {:.2f}".format(*best_offset(row)),
            f"{100 * row['miou_mean_prototype']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", nargs="+", required=True, help="trained ProtoSeg run folders")
    parser.add_argument("--data", default="data/shapes", help="the shapes root with shapes_meta.json")
    parser.add_argument("--checkpoint", default="last.pt", help="file name in each run's checkpoints/")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    rows = []
    for run in map(Path, args.runs):
        checkpoint = run / "checkpoints" / args.checkpoint
        if not checkpoint.is_file():
            parser.error(f"{checkpoint}: no such checkpoint")
        rows.append(usage(run, str(Path(args.data).resolve()), checkpoint))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
