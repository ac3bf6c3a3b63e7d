import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from protoseg.engine.distributed import close_process_group
from protoseg.prototypes import RegionMemory

CLASSES, EXTRA, SIZE = 4, 3, 6


def encoded_regions(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Embeddings whose first C coordinates one-hot encode the class, the rest random."""
    one_hot = (labels.unsqueeze(1) == torch.arange(CLASSES)).double()
    return torch.cat([one_hot, torch.randn(len(labels), EXTRA, generator=generator, dtype=torch.float64)], 1)


class SequentialMemory:
    """Reference: one region at a time in row order, plain Python."""

    def __init__(self, classes: int, dim: int, size: int, momentum: float) -> None:
        self.memory = torch.zeros(classes, size, dim, dtype=torch.float64)
        self.pointer = [0] * classes
        self.count = [0] * classes
        self.size, self.momentum = size, momentum

    def enqueue(self, embeddings, labels, scores, threshold, valid) -> None:
        for row in range(len(labels)):
            if not (bool(valid[row]) and float(scores[row]) > threshold):
                continue
            c = int(labels[row])
            slot = self.pointer[c]
            if slot < self.count[c]:
                blended = self.momentum * self.memory[c, slot] + (1 - self.momentum) * embeddings[row]
                self.memory[c, slot] = blended
            else:
                self.memory[c, slot] = embeddings[row]
            self.pointer[c] = (slot + 1) % self.size
            self.count[c] = min(self.count[c] + 1, self.size)


def random_batch(rows: int, generator: torch.Generator):
    labels = torch.randint(0, CLASSES, (rows,), generator=generator)
    scores = torch.rand(rows, generator=generator, dtype=torch.float64)
    valid = torch.rand(rows, generator=generator) > 0.2
    return encoded_regions(labels, generator), labels, scores, valid


def test_matches_sequential_reference_and_class_rows_hold_only_their_class():
    generator = torch.Generator().manual_seed(0)
    memory = RegionMemory(CLASSES, CLASSES + EXTRA, size=SIZE, momentum=0.9).double()
    reference = SequentialMemory(CLASSES, CLASSES + EXTRA, SIZE, 0.9)
    for _ in range(12):
        embeddings, labels, scores, valid = random_batch(7, generator)
        memory.enqueue(embeddings, labels, scores, 0.3, valid=valid)
        reference.enqueue(embeddings, labels, scores, 0.3, valid)
    torch.testing.assert_close(memory.memory, reference.memory)
    assert memory.pointer.tolist() == reference.pointer
    assert memory.count.tolist() == reference.count
    # class c's filled rows carry class c's code only; unfilled rows are zero
    for c in range(CLASSES):
        for slot in range(SIZE):
            row = memory.memory[c, slot]
            if memory.valid[c, slot]:
                code = torch.zeros(CLASSES, dtype=torch.float64)
                code[c] = 1
                torch.testing.assert_close(row[:CLASSES], code)
            else:
                assert torch.all(row == 0)


def test_below_threshold_and_invalid_regions_write_nothing():
    memory = RegionMemory(CLASSES, 5, size=SIZE)
    embeddings = torch.randn(4, 5)
    labels = torch.tensor([0, 1, 2, 3])
    memory.enqueue(embeddings, labels, torch.tensor([0.5, 0.7, 0.2, 0.9]), 0.7,
                   valid=torch.tensor([True, True, True, False]))
    assert torch.all(memory.memory == 0)
    assert memory.count.tolist() == [0, 0, 0, 0]
    assert memory.pointer.tolist() == [0, 0, 0, 0]


def test_empty_mask_regions_yield_no_nan():
    memory = RegionMemory(2, 3, size=4)
    embeddings = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])  # the second: pooled over an empty mask
    memory.enqueue(embeddings, torch.tensor([0, 1]), torch.tensor([0.9, 0.9]), 0.5,
                   valid=torch.tensor([True, False]))
    assert torch.isfinite(memory.memory).all()
    assert memory.count.tolist() == [1, 0]
    torch.testing.assert_close(memory.memory[0, 0], embeddings[0])


def test_pointers_wrap_and_counts_saturate():
    memory = RegionMemory(2, 2, size=4, momentum=0.5)
    for value in range(6):
        memory.enqueue(torch.full((1, 2), float(value)), torch.tensor([1]), torch.ones(1), 0.0)
    assert memory.pointer.tolist() == [0, 2]
    assert memory.count.tolist() == [0, 4]
    # slots 0 and 1 were written twice: 0.5 * first + 0.5 * second
    expected = torch.tensor([0.5 * 0 + 0.5 * 4, 0.5 * 1 + 0.5 * 5, 2.0, 3.0])
    torch.testing.assert_close(memory.memory[1, :, 0], expected)


def test_more_regions_than_slots_in_one_call_keeps_the_last_ones():
    memory = RegionMemory(2, 1, size=3, momentum=0.0)
    reference = SequentialMemory(2, 1, 3, 0.0)
    memory.enqueue(torch.tensor([[9.0]]), torch.tensor([0]), torch.ones(1), 0.5)
    reference.enqueue(torch.tensor([[9.0]]), torch.tensor([0]), torch.ones(1), 0.5, [True])
    values = torch.arange(8, dtype=torch.float32).unsqueeze(1)
    labels = torch.zeros(8, dtype=torch.long)
    memory.enqueue(values, labels, torch.ones(8), 0.5)
    reference.enqueue(values.double(), labels, torch.ones(8), 0.5, torch.ones(8, dtype=torch.bool))
    torch.testing.assert_close(memory.memory.double(), reference.memory)
    assert memory.pointer.tolist() == reference.pointer


def test_bad_shapes_raise():
    memory = RegionMemory(2, 3, size=4)
    with pytest.raises(ValueError, match="region_embeddings"):
        memory.enqueue(torch.randn(2, 4), torch.zeros(2, dtype=torch.long), torch.ones(2), 0.5)
    with pytest.raises(ValueError, match="labels"):
        memory.enqueue(torch.randn(2, 3), torch.zeros(3, dtype=torch.long), torch.ones(2), 0.5)
    with pytest.raises(ValueError, match="momentum"):
        RegionMemory(2, 3, momentum=1.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        memory = RegionMemory(CLASSES, CLASSES + EXTRA, size=SIZE, momentum=0.8).double()
        generator = torch.Generator().manual_seed(100 + rank)  # every rank sees different regions
        for _ in range(3):
            memory.enqueue(*random_batch(5, generator)[:3], 0.3, valid=None)
        results[rank] = (memory.memory.clone(), memory.pointer.clone())
    finally:
        close_process_group()


@pytest.mark.slow
def test_ddp_ranks_write_the_same_gathered_regions():
    world = 2
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(world, _free_port(), results), nprocs=world, join=True)
    reference = SequentialMemory(CLASSES, CLASSES + EXTRA, SIZE, 0.8)
    generators = [torch.Generator().manual_seed(100 + rank) for rank in range(world)]
    for _ in range(3):
        batches = [random_batch(5, generator) for generator in generators]
        for embeddings, labels, scores, _ in batches:  # rank 0's rows first
            reference.enqueue(embeddings, labels, scores, 0.3, torch.ones(5, dtype=torch.bool))
    for rank in range(world):
        memory, pointer = results[rank]
        torch.testing.assert_close(memory, reference.memory)
        assert pointer.tolist() == reference.pointer
