"""What RCA's k-means refresh and OAA's accumulation cost per epoch, beside the training step.

    PYTHONPATH=src python benchmarks/oaa_rca_costs.py [--device cuda] [--repeats 5] [--json]

Per setting (the built-in benchmark at 96 and 224 px, VOC at the release's 368 px / protoseg's 448 px):

- **k-means refresh**: one batched k-means over the whole region memory (C classes x M slots x D
  channels, K centroids, 10 Lloyd iterations), once per epoch;
- **OAA accumulation**: in the step, the attention maps of a batch resampled into the images' grids and
  quantised (``OAAMethod.track``; part of the timed step of ``protoseg benchmark``), and after it the
  write of each image's file (``AttentionStore.apply``: read the image's maps, fuse, an atomic
  ``torch.save`` with fsync) on rank 0, timed per image into a real folder and multiplied by the images of
  an epoch. Images carry 1.5 tags on average (VOC's rate).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from protoseg.benchmark.components import filled_region_memory  # noqa: E402
from protoseg.benchmark.timing import median_seconds  # noqa: E402
from protoseg.methods.oaa import OAAMethod  # noqa: E402
from protoseg.ops import kmeans  # noqa: E402
from protoseg.prototypes import AttentionStore  # noqa: E402

SETTINGS = {
    # name: classes, memory slots, feature channels D, images per epoch, batch, CAM grid, crop
    "shapes 96 px (wsss_rca.yaml)": (10, 200, 320, 1000, 8, 6, 96),
    "shapes 224 px (wsss224)": (10, 200, 320, 500, 4, 28, 224),
    "VOC 368 px (the release: VGG-16, D 512)": (20, 500, 512, 10582, 8, 46, 368),
    "VOC 448 px (configs/voc: ResNet-101, D 2048)": (20, 500, 2048, 10582, 8, 28, 448),
}


class _Network(torch.nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.backbone = torch.nn.Identity()
        self.num_classes = classes


def store_ms_per_image(classes: int, grid: int, repeats: int) -> float:
    """Median ms of one ``AttentionStore.apply`` (a file already there, 1-2 tags) into a real folder."""
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        store = AttentionStore(classes, folder)
        times = []
        for iteration in range(repeats * 20):
            index = iteration % 20
            update = torch.randint(0, 256, (classes, grid, grid), generator=generator, dtype=torch.uint8)
            tagged = torch.zeros(classes, dtype=torch.bool)
            tagged[torch.randperm(classes, generator=generator)[: 1 + iteration % 2]] = True
            started = time.perf_counter()
            store.apply(index, iteration, update, tagged, tagged, final=False)
            times.append(time.perf_counter() - started)
    times.sort()
    return 1000.0 * times[len(times) // 2]


def track_ms(classes: int, batch: int, grid: int, crop: int, device: torch.device, repeats: int) -> float:
    """Median ms of ``OAAMethod.track`` on a batch's CAMs (output stride 8 or 16) and its ``after_step``."""
    method = OAAMethod(_Network(classes), start_epoch=0)
    method.to(device)
    cam_side = max(1, crop // (16 if crop <= 96 else 8))
    cams = torch.randn(batch, classes, cam_side, cam_side, device=device)
    tags = (torch.rand(batch, classes, device=device) < 0.1).float()
    frames = torch.tensor([[1.0, 0.0, 1.0, 0.0, crop, crop]] * batch, device=device)
    data = {"image": torch.zeros(batch, 3, crop, crop, device=device), "tags": tags,
            "index": torch.arange(batch, device=device), "frame": frames}  # fmt: skip
    method.map_size = grid

    def step() -> None:
        method.track(data, cams)
        method.after_step(0)

    return 1000.0 * median_seconds(step, device, warmup=1, repeats=repeats)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)
    rows = {}
    for name, (classes, slots, dim, images, batch, grid, crop) in SETTINGS.items():
        memory = filled_region_memory(classes, slots, dim, device, generator)

        def refresh(memory=memory) -> None:
            kmeans(memory.memory, 10, iters=10, generator=generator, valid=memory.valid)

        kmeans_ms = 1000.0 * median_seconds(refresh, device, warmup=1, repeats=args.repeats)
        write_ms = store_ms_per_image(classes, grid, args.repeats)
        stage_ms = track_ms(classes, batch, grid, crop, device, args.repeats)
        steps = images // batch
        rows[name] = {
            "kmeans_refresh_s_per_epoch": kmeans_ms / 1000.0,
            "oaa_track_ms_per_step": stage_ms,
            "oaa_write_ms_per_image": write_ms,
            "oaa_s_per_epoch": (stage_ms * steps + write_ms * images) / 1000.0,
            "images_per_epoch": images,
            "steps_per_epoch": steps,
        }
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"device={device} threads={args.threads} (medians of {args.repeats})")
    print(
        "| setting | k-means refresh (s / epoch) | OAA in the step (ms / step) "
        "| OAA file write (ms / image) | OAA (s / epoch) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['kmeans_refresh_s_per_epoch']:.3f} | {row['oaa_track_ms_per_step']:.2f} "
            f"| {row['oaa_write_ms_per_image']:.2f} | {row['oaa_s_per_epoch']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
