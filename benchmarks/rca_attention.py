"""How peaked RCA's paper-mode aggregation attention is on a trained run's features, per similarity.

    python benchmarks/rca_attention.py RUN [--images 32] [--json]

For the first ``--images`` training images of a trained RCA run (its ``last.pt``, its k-means prototypes
Q), the backbone features F of every pixel against the C x K prototypes: the mean feature norm |F|, the
mean span (max - min) of the softmax's logits per pixel, the mean largest attention weight and the mean
attention entropy (nats; uniform over the valid prototypes = log(C K)), for ``dot`` at scale 1 (the paper,
today's default), ``dot`` at 1 / sqrt(D) and ``cosine`` at inverse temperature 10.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from protoseg.engine.datasets import build_split_dataset  # noqa: E402
from protoseg.engine.loading import load_trained_method  # noqa: E402


def attention_statistics(
    features: torch.Tensor, prototypes: torch.Tensor, similarity: str, scale: float
) -> dict:
    """``features`` (N, D) pixels, ``prototypes`` (P, D) valid prototypes -> statistics of the softmax."""
    if similarity == "cosine":
        logits = scale * F.normalize(features, dim=1) @ F.normalize(prototypes, dim=1).t()
    else:
        logits = scale * features @ prototypes.t()
    weights = logits.softmax(dim=1)
    entropy = -(weights * weights.clamp_min(1e-30).log()).sum(dim=1)
    return {
        "logit_span": float((logits.amax(dim=1) - logits.amin(dim=1)).mean()),
        "max_weight": float(weights.amax(dim=1).mean()),
        "entropy": float(entropy.mean()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    method, cfg, _ = load_trained_method(Path(args.run_dir) / "checkpoints/last.pt", torch.device("cpu"))
    network = method.network
    aggregation = network.aggregation
    prototypes = aggregation.prototypes[aggregation.prototype_valid]
    dataset = build_split_dataset(cfg.data, cfg.data.train_split)
    pixels = []
    with torch.no_grad():
        for index in range(min(args.images, len(dataset))):
            features = network.backbone(dataset[index]["image"][None])[-1]
            pixels.append(features.flatten(2)[0].t())
    pixels = torch.cat(pixels)
    dim = pixels.shape[1]
    rows = {
        "dot, scale 1": attention_statistics(pixels, prototypes, "dot", 1.0),
        f"dot, scale 1/sqrt(D) = {dim**-0.5:.4f}": attention_statistics(pixels, prototypes, "dot", dim**-0.5),
        "cosine, scale 10": attention_statistics(pixels, prototypes, "cosine", 10.0),
    }
    summary = {
        "feature_norm": float(pixels.norm(dim=1).mean()),
        "prototype_norm": float(prototypes.norm(dim=1).mean()),
        "valid_prototypes": int(prototypes.shape[0]),
        "uniform_entropy": math.log(max(1, prototypes.shape[0])),
        "similarities": rows,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"|F| = {summary['feature_norm']:.1f}, |Q| = {summary['prototype_norm']:.1f}, "
        f"{summary['valid_prototypes']} prototypes (uniform entropy {summary['uniform_entropy']:.2f})"
    )
    print("| similarity | logit span | mean largest weight | mean entropy (nats) |\n|---|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['logit_span']:.1f} | {row['max_weight']:.3f} | {row['entropy']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
