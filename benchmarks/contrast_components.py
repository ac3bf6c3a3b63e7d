"""Time ContrastiveSeg's pixel-contrast loss (forward + backward) and the memory enqueue.

Default: B=8, 128x128 embeddings, D=256, C=19, on CPU with one thread; prints the median of
``--repeats`` timed rounds after ``--warmup`` untimed ones, for the in-batch loss, the loss against a
full memory (``--memory-size`` per class and queue), and the enqueue alone. The functions are timed in
interleaved rounds (:mod:`protoseg.benchmark.timing`), so a change in machine load hits them alike.

With ``--step METHOD`` (e.g. ``linear``, the built-in benchmark's default model) the training step of
that method under the ``cpu`` preset of ``protoseg benchmark`` is timed in the same rounds, and the
script prints "in-batch loss + enqueue" as a percentage of that step (the median of the per-round
ratios).

    PYTHONPATH=src python benchmarks/contrast_components.py [--memory-size 5000] [--step linear]
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

from protoseg.launcher import apply_process_defaults

apply_process_defaults()  # as the protoseg command does, before torch is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from protoseg.benchmark.settings import preset_settings  # noqa: E402
from protoseg.benchmark.steps import MethodBench, fill_pixel_queue  # noqa: E402
from protoseg.benchmark.timing import interleaved_times  # noqa: E402
from protoseg.losses import PixelContrastLoss  # noqa: E402
from protoseg.prototypes import PixelQueue  # noqa: E402

IN_BATCH = "loss in-batch (fwd+bwd)"
WITH_MEMORY = "loss vs memory (fwd+bwd) + enqueue"
ENQUEUE = "enqueue alone"


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="embedding height = width")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--memory-size", type=int, default=5000)
    parser.add_argument("--pixels-per-image", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--step",
        metavar="METHOD",
        help="also time this method's training step (cpu preset of protoseg benchmark, e.g. linear) "
        "and report loss + enqueue as a percentage of it",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)

    shape = (args.batch, args.size, args.size)
    # blocky labels (16x16 regions at the embedding grid, labels at 4x resolution) and noisy predictions
    block_shape = (args.batch, args.size // 16, args.size // 16)
    blocks = torch.randint(0, args.classes, block_shape, device=device, generator=generator)
    labels = blocks.repeat_interleave(64, dim=1).repeat_interleave(64, dim=2)
    labels[:, :32] = 255
    noise = torch.randint(0, args.classes, shape, device=device, generator=generator)
    embedding_grid = blocks.repeat_interleave(16, dim=1).repeat_interleave(16, dim=2)
    flip = torch.rand(shape, device=device, generator=generator) < 0.3
    predictions = torch.where(flip, noise, embedding_grid)
    raw = torch.randn(args.batch, args.dim, args.size, args.size, device=device, generator=generator)
    embeddings = F.normalize(raw, dim=1).requires_grad_()

    criterion = PixelContrastLoss()
    memory = PixelQueue(args.classes, args.dim, args.memory_size, args.pixels_per_image).to(device)
    fill_pixel_queue(memory, generator)  # a full memory: the steady state

    def in_batch() -> None:
        embeddings.grad = None
        criterion(embeddings, labels, predictions, generator=generator, num_classes=args.classes).backward()

    def with_memory() -> None:
        embeddings.grad = None
        criterion(embeddings, labels, predictions, memory, generator).backward()
        memory.enqueue(embeddings.detach(), labels, generator)

    def enqueue() -> None:
        memory.enqueue(embeddings.detach(), labels, generator)

    functions: dict[str, Callable[[], object]] = {
        IN_BATCH: in_batch,
        WITH_MEMORY: with_memory,
        ENQUEUE: enqueue,
    }
    step_name = None
    if args.step:
        bench = MethodBench(args.step, preset_settings("cpu", device))
        step_name = f"{args.step} training step (cpu preset)"
        functions[step_name] = bench.train_step

    print(
        f"B={args.batch} {args.size}x{args.size} D={args.dim} C={args.classes} memory={args.memory_size} "
        f"device={device} threads={args.threads} (median of {args.repeats} interleaved rounds after "
        f"{args.warmup} warm-up; THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')})"
    )
    times = interleaved_times(functions, device, args.warmup, args.repeats)
    for name, values in times.items():
        print(f"{name:38s} {1000 * statistics.median(values):9.1f} ms")
    both = [loss + queue for loss, queue in zip(times[IN_BATCH], times[ENQUEUE])]
    line = f"{'in-batch loss + enqueue':38s} {1000 * statistics.median(both):9.1f} ms"
    if step_name is not None:
        share = statistics.median(part / step for part, step in zip(both, times[step_name]))
        line += f" = {100 * share:.1f} % of a {step_name}"
    print(line)


if __name__ == "__main__":
    main()
