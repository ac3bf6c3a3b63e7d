"""Does a ProtoSeg head train from its first steps? Each projection normalisation on a tiny setting.

The setting of ``tests/test_integrations.py``: two 64 x 64 images whose three classes are colour
blobs, a segmentation_models_pytorch network from scratch (resnet18 encoder) with protoseg's head
(K = 2, D = 16, prototype momentum 0.9, random prototypes), PPC 0.01 / PPD 0.001, SGD 0.05 with
momentum 0.9. For each normalisation and torch seed it trains ``--iterations`` steps and prints the
first step after which every foreground prototype has moved (``-`` if one never did) and the loss
at steps 1, 8, 16 and the last (docs/methods.md section 1, "The defaults"):

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/protoseg_early_training.py \
        --architectures FPN Unet --norms batch spatial_rms batch_rms --seeds 0 1 2

Needs ``pip install 'protoseg[smp]'``.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import torch

from protoseg.integrations.smp import protoseg_segmentor
from protoseg.losses import ProtoSegLoss
from protoseg.methods import ProtoSegMethod
from protoseg.models.heads.protoseg import PROJECTION_NORMS


def colour_blobs(noise_seed: int = 1) -> dict[str, torch.Tensor]:
    """Two 64 x 64 images whose classes are colour blobs, learnable in a few steps (also the images of
    tests/test_integrations.py): ``image`` (2, 3, 64, 64), ``mask`` (2, 64, 64)."""
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    masks[0, 8:40, 8:40] = 1
    masks[1, 24:60, 20:52] = 2
    masks[:, :4] = 255  # ignored rows
    colours = torch.tensor([[-1.0, -1.0, -1.0], [1.5, -0.5, 0.0], [0.0, 1.0, -1.5]])
    noise = 0.3 * torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(noise_seed))
    return {"image": colours[masks.clamp_max(2)].permute(0, 3, 1, 2) + noise, "mask": masks}


class EarlyTraining(NamedTuple):
    """The trained segmentor, the first step after which every foreground prototype had moved (None:
    never), how far each prototype moved in all ``(C, K)`` and the loss of every step."""

    network: torch.nn.Module
    all_moved: int | None
    moved: torch.Tensor
    losses: list[float]


def train(architecture: str, norm: str | None, seed: int, iterations: int) -> EarlyTraining:
    """``iterations`` steps of the setting above on ``smp.<architecture>`` with ``projection_norm=norm``
    (None: the library default)."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    base = getattr(smp, architecture)("resnet18", encoder_weights=None, classes=3)
    options = {} if norm is None else {"projection_norm": norm}
    network = protoseg_segmentor(base, num_classes=3, num_prototypes=2, proj_dim=16, momentum=0.9, **options)
    method = ProtoSegMethod(network, ProtoSegLoss(proto_contrast_weight=0.01, proto_distance_weight=0.001))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    batch = colour_blobs()
    before = network.head.bank.prototypes.clone()
    all_moved, losses = None, []
    for iteration in range(iterations):
        terms = method(batch, iteration)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        method.after_step(iteration)
        losses.append(terms["loss"].item())
        moved = (network.head.bank.prototypes - before).norm(dim=-1)
        if all_moved is None and bool((moved[1:] > 1e-3).all()):
            all_moved = iteration + 1
    return EarlyTraining(network, all_moved, moved, losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", nargs="+", default=["FPN", "Unet"])
    parser.add_argument(
        "--norms", nargs="+", default=["batch", "spatial_rms", "batch_rms"], choices=PROJECTION_NORMS
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=30)
    args = parser.parse_args()
    print(
        "| network | normalisation | seed | foreground prototypes all moved at | loss at 1 / 8 / 16 / last |"
    )
    print("|---|---|---|---|---|")
    for architecture in args.architectures:
        for norm in args.norms:
            for seed in args.seeds:
                _, all_moved, _, losses = train(architecture, norm, seed, args.iterations)
                picked = [losses[i] for i in (0, 7, 15) if i < len(losses)] + [losses[-1]]
                print(
                    f"| {architecture} | {norm} | {seed} | {all_moved if all_moved else '-'} | "
                    + " / ".join(f"{loss:.3f}" for loss in picked)
                    + " |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
