"""Two gloo processes on CPU, each with half a batch, must end with the global-batch prototypes."""

import datetime
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from protoseg.engine.distributed import close_process_group
from protoseg.models.heads import ProtoSegHead
from protoseg.prototypes import PrototypeBank

NUM_CLASSES, NUM_PROTOTYPES, DIM, NUM_PIXELS, WORLD_SIZE = 5, 4, 8, 400, 2


def make_bank(init: str = "random") -> PrototypeBank:
    return PrototypeBank(
        NUM_CLASSES, NUM_PROTOTYPES, DIM, momentum=0.8, generator=torch.Generator().manual_seed(0), init=init
    )


def make_batch():
    generator = torch.Generator().manual_seed(1)
    embeddings = F.normalize(torch.randn(NUM_PIXELS, DIM, generator=generator), dim=1)
    labels = torch.randint(0, NUM_CLASSES, (NUM_PIXELS,), generator=generator)
    labels[torch.rand(NUM_PIXELS, generator=generator) < 0.1] = 255
    labels[: NUM_PIXELS // 2][labels[: NUM_PIXELS // 2] == 4] = 3  # class 4 only on rank 1
    correct = torch.rand(NUM_PIXELS, generator=generator) < 0.7
    return embeddings, labels, correct


def make_head() -> ProtoSegHead:
    torch.manual_seed(2)
    return ProtoSegHead(6, NUM_CLASSES, num_prototypes=NUM_PROTOTYPES, proj_dim=DIM, momentum=0.8)


def make_images():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(WORLD_SIZE, 6, 6, 6, generator=generator)
    target = torch.randint(0, NUM_CLASSES, (WORLD_SIZE, 6, 6), generator=generator)
    return features, target


def _worker(rank: int, port: int, result_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        embeddings, labels, correct = make_batch()
        mine = slice(rank * NUM_PIXELS // WORLD_SIZE, (rank + 1) * NUM_PIXELS // WORLD_SIZE)
        bank = make_bank()
        assignments = bank.assign(embeddings[mine], labels[mine])
        bank.update(embeddings[mine], labels[mine], assignments, correct[mine])
        data_bank = make_bank(init="data")
        data_bank.update(embeddings[mine], labels[mine], assignments, correct[mine])
        head = make_head()
        features, target = make_images()
        outputs = head(features[rank : rank + 1], target[rank : rank + 1])
        head.update_prototypes(outputs["prototype_update"])
        torch.save(
            {
                "bank": bank.prototypes,
                "assignments": assignments,
                "head": head.bank.prototypes,
                "data_bank": data_bank.prototypes,
                "initialized": data_bank.initialized,
            },
            f"{result_path}.{rank}",
        )
    finally:
        close_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_end_with_identical_global_batch_prototypes(tmp_path):
    result_path = str(tmp_path / "result")
    # spawn, not fork: a fork of this process (torch's thread pools running) can deadlock in the child
    mp.start_processes(
        _worker, args=(_free_port(), result_path), nprocs=WORLD_SIZE, join=True, start_method="spawn"
    )
    ranks = [torch.load(f"{result_path}.{rank}") for rank in range(WORLD_SIZE)]
    assert torch.equal(ranks[0]["bank"], ranks[1]["bank"])
    assert torch.equal(ranks[0]["head"], ranks[1]["head"])

    # One process seeing the whole batch: the same (per-rank) clustering, one update on everything.
    embeddings, labels, correct = make_batch()
    reference = make_bank()
    halves = [slice(0, NUM_PIXELS // 2), slice(NUM_PIXELS // 2, NUM_PIXELS)]
    assignments = torch.cat([reference.assign(embeddings[half], labels[half]) for half in halves])
    assert torch.equal(assignments, torch.cat([rank["assignments"] for rank in ranks]))
    before = reference.prototypes.clone()
    reference.update(embeddings, labels, assignments, correct)
    torch.testing.assert_close(ranks[0]["bank"], reference.prototypes, atol=1e-6, rtol=0)
    assert (reference.prototypes[4] != before[4]).any()  # class 4 (rank 1 only) moved on rank 0 too

    # init="data": every rank initialises the same prototypes from the global batch's pixels
    assert torch.equal(ranks[0]["data_bank"], ranks[1]["data_bank"])
    assert torch.equal(ranks[0]["initialized"], ranks[1]["initialized"])
    data_reference = make_bank(init="data")
    data_reference.update(embeddings, labels, assignments, correct)
    torch.testing.assert_close(ranks[0]["data_bank"], data_reference.prototypes, atol=1e-6, rtol=0)
    assert torch.equal(ranks[0]["initialized"], data_reference.initialized)
    assert ranks[0]["initialized"][4].all()  # class 4's pixels were on rank 1 only

    # Without the all-reduce rank 0's head would only have learned from its own image.
    alone = make_head()
    features, target = make_images()
    alone.update_prototypes(alone(features[:1], target[:1])["prototype_update"])
    assert not torch.allclose(alone.bank.prototypes, ranks[0]["head"], atol=1e-6)
