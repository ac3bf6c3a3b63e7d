"""SeededSampler: determinism, epochs, rank sharding, resume, worker-count independence."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from protoseg.data import VOCDataset, build_transforms
from protoseg.data.sampler import SeededSampler, ShardedEvalIndices, sample_seed


def take(iterable, count, start=0):
    return list(itertools.islice(iter(iterable), start, start + count))


def test_epoch_order_is_randperm_of_seed_plus_epoch():
    sampler = SeededSampler(10, seed=7)
    stream = take(sampler, 30)
    for epoch in range(3):
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(7 + epoch)).tolist()
        assert [index for index, _ in stream[epoch * 10 : (epoch + 1) * 10]] == expected


def test_no_shuffle_is_arange():
    stream = take(SeededSampler(5, seed=3, shuffle=False), 10)
    assert [index for index, _ in stream] == [0, 1, 2, 3, 4] * 2


def test_same_seed_same_stream_and_distinct_sample_seeds():
    first, second = take(SeededSampler(13, seed=1), 100), take(SeededSampler(13, seed=1), 100)
    assert first == second
    assert first != take(SeededSampler(13, seed=2), 100)
    seeds = [seed for _, seed in first]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= seed < 2**63 for seed in seeds)
    assert sample_seed(1, 0, 0) == seeds[0]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_partition_each_epoch(world_size):
    length = 11
    per_rank = length // world_size
    streams = [
        take(SeededSampler(length, 5, rank=r, world_size=world_size), 2 * per_rank) for r in range(world_size)
    ]
    sampler = SeededSampler(length, 5, world_size=world_size)
    for epoch in range(2):
        order = torch.randperm(length, generator=torch.Generator().manual_seed(5 + epoch)).tolist()
        kept = order[: per_rank * world_size]
        chunk = [stream[epoch * per_rank : (epoch + 1) * per_rank] for stream in streams]
        for rank in range(world_size):
            assert [index for index, _ in chunk[rank]] == kept[rank::world_size]
            positions = range(rank, per_rank * world_size, world_size)
            assert [seed for _, seed in chunk[rank]] == [sample_seed(5, epoch, p) for p in positions]
        indices = [index for part in chunk for index, _ in part]
        assert sorted(indices) == sorted(kept) and len(set(indices)) == len(indices)
        assert sampler.epoch_order(epoch).tolist() == kept


@pytest.mark.parametrize("start_index", [0, 3, 5, 11, 17])
def test_resume_continues_the_exact_stream(start_index):
    full = take(SeededSampler(7, seed=9, rank=1, world_size=2), 40)
    resumed = take(SeededSampler(7, seed=9, rank=1, world_size=2, start_index=start_index), 40 - start_index)
    assert resumed == full[start_index:]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="rank"):
        SeededSampler(10, 0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        SeededSampler(10, 0, world_size=0)
    with pytest.raises(ValueError, match="3"):
        SeededSampler(3, 0, rank=0, world_size=4)
    with pytest.raises(ValueError, match="start_index"):
        SeededSampler(10, 0, start_index=-1)
    with pytest.raises(ValueError, match="rank"):
        ShardedEvalIndices(10, rank=3, world_size=3)


@pytest.mark.parametrize(("length", "world_size"), [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_sharded_eval_indices_cover_once(length, world_size):
    shards = [list(ShardedEvalIndices(length, rank, world_size)) for rank in range(world_size)]
    assert [len(ShardedEvalIndices(length, rank, world_size)) for rank in range(world_size)] == [
        len(shard) for shard in shards
    ]
    assert sorted(itertools.chain(*shards)) == list(range(length))
    assert shards[0] == list(range(0, length, world_size))


@pytest.fixture
def tiny_voc(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClass").mkdir()
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    names = [f"im{index}" for index in range(6)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(
            tmp_path / "JPEGImages" / f"{name}.jpg"
        )
        mask = rng.integers(0, 21, (16, 24)).astype(np.uint8)
        Image.fromarray(mask).save(tmp_path / "SegmentationClass" / f"{name}.png")
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(names))
    return tmp_path


def collect_batches(dataset, num_workers, seed, start_index=0, count=4):
    sampler = SeededSampler(len(dataset), seed, start_index=start_index)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=num_workers)
    batches = take(loader, count)
    return [(batch["image"], batch["mask"], list(batch["name"])) for batch in batches]


def test_batches_independent_of_workers_and_resumable(tiny_voc):
    torch.set_num_threads(1)
    transforms = build_transforms(train=True, crop_size=(12, 12), scale_range=(0.5, 1.5), color_jitter=0.2)
    dataset = VOCDataset(tiny_voc, "train", transforms=transforms)
    serial = collect_batches(dataset, 0, seed=4)
    parallel = collect_batches(dataset, 2, seed=4)
    resumed = collect_batches(dataset, 0, seed=4, start_index=2 * 2, count=2)
    for expected, got in zip(serial, parallel):
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1]) and expected[2] == got[2]
    for expected, got in zip(serial[2:], resumed):
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    # the augmentation really is random per sample: crops of one image differ across epochs
    other_seed = collect_batches(dataset, 0, seed=5)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(serial, other_seed))
