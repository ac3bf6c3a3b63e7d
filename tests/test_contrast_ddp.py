"""PixelQueue under torch.distributed (2 gloo processes): identical queues holding both ranks' items."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from protoseg.engine.distributed import close_process_group
from protoseg.losses import ContrastSegLoss
from protoseg.prototypes import PixelQueue

WORLD, CLASSES, SIZE, PER_IMAGE = 2, 3, 30, 4
DIM = CLASSES + WORLD  # one coordinate codes the class, one the rank


def rank_batch(rank, step):
    """Labels of 2 images at 8x8 (given at 16x16) and embeddings coding (class, rank) in coordinates."""
    generator = torch.Generator().manual_seed(100 * rank + step)
    label_map = torch.randint(0, CLASSES, (2, 8, 8), generator=generator)
    label_map[:, 0] = 255
    if rank == 1:
        label_map[label_map == 2] = 0  # class 2 only on rank 0
    values = 0.05 * torch.rand(2, 8, 8, DIM, generator=generator)
    values[..., CLASSES + rank] += 1.0
    values[label_map < CLASSES] += F.one_hot(label_map[label_map < CLASSES], DIM).float()
    embeddings = F.normalize(values, dim=-1).permute(0, 3, 1, 2).contiguous()
    return embeddings, label_map.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)


def worker(rank, port, directory):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        queue = PixelQueue(CLASSES, DIM, size=SIZE, pixels_per_image=PER_IMAGE)
        generator = torch.Generator().manual_seed(rank)  # ranks choose different pixels
        for step in range(3):
            queue.enqueue(*rank_batch(rank, step), generator=generator)
        seed = ContrastSegLoss(seed=5).generator(torch.device("cpu")).initial_seed()
        torch.save({"state": queue.state_dict(), "generator_seed": seed}, f"{directory}/rank{rank}.pt")
    finally:
        close_process_group()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_queues_identical_on_every_rank_and_hold_both_ranks_items(tmp_path):
    # spawn, not fork: a fork of this process (torch's thread pools running) can deadlock in the child
    arguments = (free_port(), str(tmp_path))
    mp.start_processes(worker, args=arguments, nprocs=WORLD, join=True, start_method="spawn")
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]
    first, second = results[0]["state"], results[1]["state"]
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert [result["generator_seed"] for result in results] == [5, 6], "sampling seeds differ per rank"

    expected_pixels, expected_segments = [0] * CLASSES, [0] * CLASSES
    for step in range(3):
        for rank in range(WORLD):
            _, labels = rank_batch(rank, step)
            for image in labels[:, ::2, ::2]:
                for c in range(CLASSES):
                    count = int((image == c).sum())
                    expected_pixels[c] += min(count, PER_IMAGE)
                    expected_segments[c] += int(count > 0)
    assert first["pixel_filled"].tolist() == [min(n, SIZE) for n in expected_pixels]
    assert first["pixel_pointer"].tolist() == [n % SIZE for n in expected_pixels]
    assert first["segment_filled"].tolist() == [min(n, SIZE) for n in expected_segments]

    for queue, filled in (("pixel_queue", "pixel_filled"), ("segment_queue", "segment_filled")):
        for c in range(CLASSES):
            entries = first[queue][c, : int(first[filled][c])]
            assert (entries[:, :CLASSES].argmax(dim=1) == c).all(), f"{queue} {c} holds other classes"
            ranks = set(entries[:, CLASSES:].argmax(dim=1).tolist())
            assert ranks == ({0} if c == 2 else {0, 1}), f"{queue} of class {c} has items of ranks {ranks}"
