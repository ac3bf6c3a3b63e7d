"""Anchor samplers: counts, hard/easy split, top-up, determinism, and no host synchronisation."""

import pytest
import torch
import torch.nn.functional as F

from protoseg.losses import HardAnchorSampler, PixelContrastLoss, RandomAnchorSampler
from protoseg.losses.anchor_sampling import pack_anchor_indices
from protoseg.prototypes import PixelQueue

IGNORE = 255


def released_split(num_hard, num_easy, n_view):
    """The released code's if/elif rule for how many hard and easy anchors to keep."""
    if num_hard >= n_view / 2 and num_easy >= n_view / 2:
        hard = n_view // 2
        return hard, n_view - hard
    if num_hard >= n_view / 2:
        return n_view - num_easy, num_easy
    return num_hard, n_view - num_hard


def build_case():
    """3 images of 20x20; per (image, class) a chosen number of hard and easy pixels."""
    # (image, class): (hard pixels, easy pixels)
    plan = {
        (0, 0): (30, 30),  # both plentiful
        (0, 1): (2, 40),  # hard short -> topped up with easy
        (0, 2): (50, 1),  # easy short -> topped up with hard
        (0, 3): (4, 4),  # 8 pixels <= max_views: excluded
        (1, 0): (0, 25),  # no hard at all
        (1, 4): (6, 5),  # 11 = max_views + 1 pixels: included
        (1, 5): (5, 5),  # 10 = max_views pixels: excluded
        (2, 2): (100, 100),
        (2, 1): (13, 0),  # no easy at all
    }
    labels = torch.full((3, 400), IGNORE)
    predictions = torch.full((3, 400), 7)
    cursor = [0, 0, 0]
    for (image, cls), (hard, easy) in plan.items():
        start = cursor[image]
        labels[image, start : start + hard + easy] = cls
        predictions[image, start : start + hard] = (cls + 1) % 6  # wrong
        predictions[image, start + hard : start + hard + easy] = cls  # right
        cursor[image] += hard + easy
    shuffle = torch.randperm(400, generator=torch.Generator().manual_seed(0))
    return plan, labels[:, shuffle], predictions[:, shuffle]


def slots_of(indices, labels, pixels):
    """{(image, class): list of flat pixel indices} from the valid views, checking each slot."""
    result = {}
    for slot in range(indices.valid.shape[0]):
        chosen = indices.pixel_index[slot][indices.valid[slot]].tolist()
        if not chosen:
            continue
        count = len(chosen)
        assert indices.valid[slot, :count].all(), "valid views are the first n_view of the slot"
        images = {p // pixels for p in chosen}
        assert len(images) == 1, "one slot holds one image"
        image = images.pop()
        cls = int(indices.labels[slot])
        assert all(int(labels.flatten()[p]) == cls for p in chosen), "every anchor has its slot's class"
        assert len(set(chosen)) == count, "no pixel twice"
        assert (image, cls) not in result
        result[(image, cls)] = chosen
    return result


def test_counts_hard_easy_split_and_top_up():
    plan, labels, predictions = build_case()
    max_views, max_samples = 10, 40
    sampler = HardAnchorSampler(max_samples=max_samples, max_views=max_views)
    indices = sampler.sample_indices(labels, predictions, torch.Generator().manual_seed(1), num_classes=6)
    qualifying = {key for key, (hard, easy) in plan.items() if hard + easy > max_views}
    n_view = min(max_samples // len(qualifying), max_views)
    assert n_view == 5  # odd: exercises the rounding of the split
    slots = slots_of(indices, labels, 400)
    assert set(slots) == qualifying
    for (image, cls), chosen in slots.items():
        hard, easy = plan[(image, cls)]
        assert len(chosen) == n_view
        expected_hard, expected_easy = released_split(hard, easy, n_view)
        is_hard = [int(predictions.flatten()[p]) != cls for p in chosen]
        assert sum(is_hard) == expected_hard and len(chosen) - sum(is_hard) == expected_easy
        assert is_hard == sorted(is_hard, reverse=True), "hard views first, then easy"


def test_n_view_capped_by_max_views_and_zero_when_too_many_classes():
    plan, labels, predictions = build_case()
    indices = HardAnchorSampler(max_samples=1024, max_views=10).sample_indices(labels, predictions)
    slots = slots_of(indices, labels, 400)
    assert {len(chosen) for chosen in slots.values()} == {10}
    # 7 qualifying pairs > max_samples: n_view = 0, nothing sampled, no error
    tiny = HardAnchorSampler(max_samples=6, max_views=10).sample_indices(labels, predictions)
    assert not tiny.valid.any()


def test_ignored_pixels_and_out_of_range_labels_never_sampled():
    labels = torch.full((1, 300), IGNORE)
    labels[0, :150] = 1
    labels[0, 150:200] = 9  # outside num_classes = 5
    indices = RandomAnchorSampler(max_samples=100, max_views=20).sample_indices(labels, num_classes=5)
    chosen = indices.pixel_index[indices.valid]
    assert chosen.numel() == 20 and (chosen < 150).all()


def test_determinism_and_seed_dependence():
    _, labels, predictions = build_case()
    sampler = HardAnchorSampler(max_samples=40, max_views=10)
    first = sampler.sample_indices(labels, predictions, torch.Generator().manual_seed(3))
    again = sampler.sample_indices(labels, predictions, torch.Generator().manual_seed(3))
    other = sampler.sample_indices(labels, predictions, torch.Generator().manual_seed(4))
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first.pixel_index, other.pixel_index)


def test_every_eligible_pixel_can_be_drawn():
    labels = torch.full((1, 60), IGNORE)
    labels[0, 10:40] = 2  # 30 pixels, 6 drawn each time
    sampler = RandomAnchorSampler(max_samples=6, max_views=6)
    generator = torch.Generator().manual_seed(5)
    seen = torch.zeros(60, dtype=torch.long)
    for _ in range(60):
        indices = sampler.sample_indices(labels, generator=generator)
        seen.index_add_(0, indices.pixel_index[indices.valid], torch.ones(6, dtype=torch.long))
    assert (seen[10:40] > 0).all() and seen.sum() == 360 and seen[:10].sum() == 0


def test_arbitrary_labels_without_num_classes():
    """Without num_classes any label but ignore_index and negatives is a class, however large."""
    labels = torch.full((2, 100), IGNORE)
    labels[0, :30] = 70000
    labels[0, 30:55] = 3
    labels[0, 55:60] = 12  # 5 pixels: too few
    labels[1, 10:50] = 2**40
    labels[1, 50:62] = -4  # negative: ignored
    shuffle = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    labels = labels[:, shuffle]
    indices = RandomAnchorSampler(max_samples=30, max_views=10).sample_indices(
        labels, generator=torch.Generator().manual_seed(1)
    )
    slots = slots_of(indices, labels, 100)
    assert set(slots) == {(0, 3), (0, 70000), (1, 2**40)}, "classes ascending within an image"
    assert {len(chosen) for chosen in slots.values()} == {10}
    assert indices.labels[indices.valid.any(dim=1)].tolist() == [3, 70000, 2**40]


def test_views_are_uniform_within_the_hard_and_easy_groups():
    """30 hard and 30 easy pixels, n_view = 10: each pixel is drawn in about 1/6 of the draws."""
    labels = torch.full((1, 64), IGNORE)
    labels[0, :60] = 1
    predictions = torch.ones(1, 64, dtype=torch.long)
    predictions[0, :30] = 0  # hard
    sampler = HardAnchorSampler(max_samples=10, max_views=10)
    generator = torch.Generator().manual_seed(9)
    counts = torch.zeros(64, dtype=torch.long)
    for _ in range(300):
        indices = sampler.sample_indices(labels, predictions, generator, num_classes=2)
        chosen = indices.pixel_index[indices.valid]
        assert (chosen[:5] < 30).all() and (chosen[5:] >= 30).all() and chosen.numel() == 10
        counts += torch.bincount(chosen, minlength=64)
    assert counts[60:].sum() == 0
    chi_square = float(((counts[:60] - 50.0) ** 2 / 50.0).sum())
    assert chi_square < 110  # 59 degrees of freedom: mean 59, sd 11; a biased draw gives hundreds


def test_random_sampler_and_hard_sampler_without_predictions_agree():
    _, labels, predictions = build_case()
    random_sampler = RandomAnchorSampler(max_samples=40, max_views=10)
    hard_sampler = HardAnchorSampler(max_samples=40, max_views=10)
    with_predictions = random_sampler.sample_indices(labels, predictions, torch.Generator().manual_seed(6))
    without = random_sampler.sample_indices(labels, None, torch.Generator().manual_seed(6))
    hard_without = hard_sampler.sample_indices(labels, None, torch.Generator().manual_seed(6))
    for a, b, c in zip(with_predictions, without, hard_without):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert {len(chosen) for chosen in slots_of(without, labels, 400).values()} == {5}


def test_call_gathers_embeddings_in_both_layouts_and_pack_keeps_valid_views():
    _, labels, predictions = build_case()
    embeddings = torch.randn(3, 4, 20, 20)
    sampler = HardAnchorSampler(max_samples=40, max_views=10)

    def seeded():
        return torch.Generator().manual_seed(7)

    anchors, anchor_labels, valid = sampler(embeddings, labels, predictions, seeded())
    channels_last = embeddings.flatten(2).transpose(1, 2)
    anchors_last, _, valid_last = sampler(channels_last, labels, predictions, seeded())
    assert torch.equal(anchors, anchors_last) and torch.equal(valid, valid_last)
    indices = sampler.sample_indices(labels, predictions, seeded())
    flat = channels_last.reshape(-1, 4)
    for slot, view in zip(*torch.where(valid)):
        assert torch.equal(anchors[slot, view], flat[indices.pixel_index[slot, view]])
    assert (anchors[~valid] == 0).all()

    packed = pack_anchor_indices(indices, capacity=40)
    count = int(valid.sum())
    assert packed.valid[:count].all() and not packed.valid[count:].any()
    assert packed.pixel_index[:count].tolist() == indices.pixel_index[valid].tolist()
    assert packed.labels[:count].tolist() == anchor_labels.unsqueeze(1).expand_as(valid)[valid].tolist()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="max_views"):
        HardAnchorSampler(max_views=0)
    with pytest.raises(ValueError, match="max_samples"):
        RandomAnchorSampler(max_samples=0)
    with pytest.raises(ValueError, match="predictions shape"):
        HardAnchorSampler().sample_indices(torch.zeros(2, 10, dtype=torch.long), torch.zeros(2, 9))
    with pytest.raises(ValueError, match="embeddings shape"):
        HardAnchorSampler()(torch.zeros(2, 3, 4, 4), torch.zeros(2, 15, dtype=torch.long))


def test_loss_and_enqueue_have_no_host_synchronisation():
    generator = torch.Generator().manual_seed(8)
    classes, dim = 5, 8
    embeddings = F.normalize(torch.randn(2, dim, 16, 16, generator=generator), dim=1).requires_grad_()
    labels = torch.randint(0, classes, (2, 64, 64), generator=generator)
    labels[:, :8] = IGNORE
    predictions = torch.randint(0, classes, (2, 16, 16), generator=generator)
    memory = PixelQueue(classes, dim, size=20, pixels_per_image=4)
    criterion = PixelContrastLoss(max_samples=64, max_views=20)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        in_batch = criterion(embeddings, labels, predictions, generator=generator, num_classes=classes)
        with_memory = criterion(embeddings, labels, predictions, memory, generator=generator)
        memory.enqueue(embeddings.detach(), labels, generator=generator)
    names = {event.name for event in profile.events()}
    assert "aten::sort" in names, "the profiler recorded the sampler's ops"
    assert not names & {"aten::nonzero", "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero"}
    assert in_batch.item() > 0 and with_memory.item() == 0.0  # the memory was empty before enqueue
