"""PixelQueue: class-correct entries, ring pointers, class 0, stride, and none of the released bugs."""

import pytest
import torch
import torch.nn.functional as F

from protoseg.ops.grouping import order_by_code_at_random
from protoseg.ops.labels import resize_labels
from protoseg.prototypes import PixelQueue

CLASSES, EXTRA = 4, 3
DIM = CLASSES + EXTRA
IGNORE = 255


def class_coded_embeddings(label_map, generator):
    """(B, DIM, H, W): coordinate ``label`` is 1 (none for ignored pixels) plus small noise elsewhere."""
    batch, height, width = label_map.shape
    values = 0.05 * torch.rand(batch, height, width, DIM, generator=generator)
    values[..., CLASSES:] += torch.rand(batch, height, width, EXTRA, generator=generator)
    known = label_map < CLASSES
    values[known] += F.one_hot(label_map[known], DIM).float()
    return F.normalize(values, dim=-1).permute(0, 3, 1, 2).contiguous()


def coded_class(entries):
    return entries[:, :CLASSES].argmax(dim=1)


def test_entries_come_from_their_class_with_strided_labels():
    generator = torch.Generator().manual_seed(0)
    label_map = torch.randint(0, CLASSES, (3, 6, 6), generator=generator)
    label_map[0, :2] = IGNORE
    label_map[1][label_map[1] == 2] = 0
    label_map[1, 5, 5] = 2  # class 2 has a single pixel in image 1
    label_map[2][label_map[2] == 3] = 1  # class 3 absent from image 2
    embeddings = class_coded_embeddings(label_map, generator)
    labels_4x = label_map.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    queue = PixelQueue(CLASSES, DIM, size=40, pixels_per_image=5)
    queue.enqueue(embeddings, labels_4x, generator)

    flat = embeddings.permute(0, 2, 3, 1).reshape(-1, DIM).double()
    flat_labels = label_map.flatten()
    image_of = torch.arange(3).repeat_interleave(36)
    for c in range(CLASSES):
        counts = [int((label_map[b] == c).sum()) for b in range(3)]
        written = sum(min(n, 5) for n in counts)
        assert int(queue.pixel_filled[c]) == written and int(queue.pixel_pointer[c]) == written
        entries = queue.pixel_queue[c, :written].double()
        assert (coded_class(entries) == c).all()
        similarity = entries @ flat.T
        best = similarity.argmax(dim=1)
        assert torch.allclose(similarity.max(dim=1).values, torch.ones_like(similarity[:, 0]), atol=1e-6)
        assert (flat_labels[best] == c).all(), "pixel entries are pixels of their class"
        assert len(set(best.tolist())) == written, "no pixel enqueued twice"
        assert image_of[best].tolist() == sorted(image_of[best].tolist()), "written image by image"
        assert [int((image_of[best] == b).sum()) for b in range(3)] == [min(n, 5) for n in counts]
        assert (queue.pixel_queue[c, written:] == 0).all()

        present = [b for b in range(3) if counts[b] > 0]
        assert int(queue.segment_filled[c]) == len(present) == int(queue.segment_pointer[c])
        for slot, b in enumerate(present):
            mean = flat[(image_of == b) & (flat_labels == c)].mean(dim=0)
            assert torch.allclose(queue.segment_queue[c, slot].double(), F.normalize(mean, dim=0), atol=1e-6)
    assert int(queue.segment_filled[0]) == 3, "class 0 is enqueued like any other"
    assert torch.isfinite(queue.pixel_queue).all() and torch.isfinite(queue.segment_queue).all()


def ring_reference(steps, size):
    """Brute-force ring buffers: ``steps`` is a list of per-class item lists (each item a tensor)."""
    slots = [[None] * size for _ in range(CLASSES)]
    pointer = [0] * CLASSES
    written = [0] * CLASSES
    for step in steps:
        for c in range(CLASSES):
            for item in step[c]:
                slots[c][pointer[c]] = item
                pointer[c] = (pointer[c] + 1) % size
                written[c] += 1
    return slots, pointer, [min(w, size) for w in written]


@pytest.mark.parametrize("size", [3, 4, 5])
def test_ring_buffer_pointers_wrap_and_match_reference(size):
    """One pixel per (image, class): the written items are known, so the whole queue can be compared.

    4 images per step: a class present in 4 images writes more items than size = 3 and exactly size = 4.
    """
    generator = torch.Generator().manual_seed(1)
    queue = PixelQueue(CLASSES, DIM, size=size, pixels_per_image=2)
    pixel_steps, segment_steps = [], []
    for step in range(4):
        label_map = torch.full((4, 2, 2), IGNORE)
        for b in range(4):
            count = int(torch.randint(0, 4, (1,), generator=generator))
            present = torch.randperm(CLASSES, generator=generator)[:count]
            label_map[b].view(-1)[: len(present)] = present
        if step == 1:  # class 0 in every image, class 3 in none, class 1 in three
            label_map[:, 0, 0] = 0
            label_map[:3, 0, 1] = 1
            label_map[3, 0, 1] = 2
            label_map[label_map == 3] = IGNORE
        embeddings = class_coded_embeddings(label_map, generator)
        queue.enqueue(embeddings, label_map, generator)
        items = [[] for _ in range(CLASSES)]
        for b in range(4):
            for pixel in range(4):
                c = int(label_map[b].view(-1)[pixel])
                if c != IGNORE:
                    items[c].append(embeddings[b].flatten(1)[:, pixel])
        pixel_steps.append(items)
        segment_steps.append(items)
        slots, pointer, filled = ring_reference(pixel_steps, size)
        assert queue.pixel_pointer.tolist() == pointer and queue.pixel_filled.tolist() == filled
        assert queue.segment_pointer.tolist() == pointer and queue.segment_filled.tolist() == filled
        for c in range(CLASSES):
            for slot in range(size):
                expected = torch.zeros(DIM) if slots[c][slot] is None else slots[c][slot]
                assert torch.allclose(queue.pixel_queue[c, slot], expected, atol=1e-6)
                assert torch.allclose(queue.segment_queue[c, slot], expected, atol=1e-6)


def test_single_pixel_and_absent_classes_give_no_nan():
    label_map = torch.full((2, 5, 5), IGNORE)
    label_map[0, 2, 3] = 1
    embeddings = class_coded_embeddings(label_map, torch.Generator().manual_seed(2))
    queue = PixelQueue(CLASSES, DIM, size=6, pixels_per_image=3)
    queue.enqueue(embeddings, label_map)
    assert queue.pixel_filled.tolist() == [0, 1, 0, 0] and queue.segment_filled.tolist() == [0, 1, 0, 0]
    assert torch.allclose(queue.segment_queue[1, 0], embeddings[0, :, 2, 3])
    assert torch.allclose(queue.pixel_queue[1, 0], embeddings[0, :, 2, 3])
    assert torch.isfinite(queue.pixel_queue).all() and torch.isfinite(queue.segment_queue).all()
    queue.enqueue(embeddings, torch.full((2, 5, 5), IGNORE))  # nothing to write
    assert queue.pixel_filled.tolist() == [0, 1, 0, 0] and queue.pixel_pointer.tolist() == [0, 1, 0, 0]
    rows, labels, valid = queue.contrast_entries()
    assert rows.shape == (CLASSES * 12, DIM) and int(valid.sum()) == 2
    assert labels[valid].tolist() == [1, 1] and torch.equal(rows[valid][0], queue.segment_queue[1, 0])


def test_deterministic_with_seed_and_saved_in_state_dict():
    generator = torch.Generator().manual_seed(3)
    label_map = torch.randint(0, CLASSES, (2, 8, 8), generator=generator)
    embeddings = class_coded_embeddings(label_map, generator)
    first = PixelQueue(CLASSES, DIM, size=10, pixels_per_image=3)
    second = PixelQueue(CLASSES, DIM, size=10, pixels_per_image=3)
    first.enqueue(embeddings, label_map, torch.Generator().manual_seed(9))
    second.enqueue(embeddings, label_map, torch.Generator().manual_seed(9))
    assert torch.equal(first.pixel_queue, second.pixel_queue)
    state = first.state_dict()
    assert set(state) == {
        "pixel_queue", "segment_queue", "pixel_pointer", "segment_pointer", "pixel_filled", "segment_filled"
    }  # fmt: skip
    restored = PixelQueue(CLASSES, DIM, size=10, pixels_per_image=3)
    restored.load_state_dict(state)
    assert torch.equal(restored.pixel_queue, first.pixel_queue)
    assert torch.equal(restored.pixel_filled, first.pixel_filled)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="size"):
        PixelQueue(3, 4, size=0)
    queue = PixelQueue(3, 4, size=5)
    with pytest.raises(ValueError, match="embeddings"):
        queue.enqueue(torch.zeros(2, 5, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels shape"):
        queue.enqueue(torch.zeros(2, 4, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long))


@pytest.mark.parametrize(
    "source, target",
    [((16, 12), (4, 3)), ((8, 8), (8, 8)), ((16, 16), (8, 4)), ((10, 7), (4, 3)), ((3, 5), (6, 10))],
)
def test_resize_labels_is_nearest_neighbour(source, target):
    generator = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 2**26, (2, *source), generator=generator)  # beyond float32's exact range
    resized = resize_labels(labels, target)
    assert resized.dtype == torch.long and resized.shape == (2, *target) and resized.is_contiguous()
    rows = [min(int(i * source[0] / target[0]), source[0] - 1) for i in range(target[0])]
    cols = [min(int(j * source[1] / target[1]), source[1] - 1) for j in range(target[1])]
    if source[0] % target[0] == 0 and source[1] % target[1] == 0:  # the exact strided path
        assert torch.equal(resized, labels[:, rows][:, :, cols])
    small = labels % 1000  # every path agrees with F.interpolate where float32 is exact
    expected = F.interpolate(small.unsqueeze(1).float(), size=target, mode="nearest").squeeze(1).long()
    assert torch.equal(resize_labels(small, target), expected)
    assert torch.equal(expected, small[:, rows][:, :, cols])


def test_order_by_code_at_random_groups_rows_and_shuffles_within_codes():
    codes = torch.tensor([[2, 0, 1, 0, 2, 2, 1, 0], [0, 0, 0, 3, 3, 1, 0, 0]])
    first = order_by_code_at_random(codes, 4, torch.Generator().manual_seed(0))
    again = order_by_code_at_random(codes, 4, torch.Generator().manual_seed(0))
    assert torch.equal(first, again)
    for row in range(2):
        items = first[row].tolist()
        assert sorted(items) == list(range(8 * row, 8 * row + 8)), "row b lists exactly row b's items"
        sorted_codes = [int(codes.flatten()[item]) for item in items]
        assert sorted_codes == sorted(int(code) for code in codes[row])
    # within a code every order is equally likely: the first pixel of code 0 in row 0 (of 3)
    generator = torch.Generator().manual_seed(1)
    firsts = torch.stack([order_by_code_at_random(codes, 4, generator)[0, 0] for _ in range(600)])
    counts = torch.bincount(firsts, minlength=8)
    assert counts[[0, 2, 4, 5, 6]].sum() == 0
    assert all(140 < int(counts[item]) < 260 for item in (1, 3, 7))  # 200 expected, sd 11.5
    with pytest.raises(ValueError, match="code_limit"):
        order_by_code_at_random(torch.zeros(4, 3, dtype=torch.long), 2**31)


def test_enqueued_pixels_are_uniform_within_their_class():
    """12 pixels of class 0 and P = 4: every pixel is written in about a third of the enqueues."""
    label_map = torch.full((1, 4, 4), IGNORE)
    label_map.view(-1)[:12] = 0
    embeddings = torch.eye(16).view(1, 16, 4, 4)  # embedding of pixel p = unit vector p
    queue = PixelQueue(1, 16, size=4, pixels_per_image=4)
    generator = torch.Generator().manual_seed(2)
    counts = torch.zeros(16, dtype=torch.long)
    for _ in range(300):
        queue.enqueue(embeddings, label_map, generator)
        written = queue.pixel_queue[0].argmax(dim=1)
        assert len(set(written.tolist())) == 4
        counts += torch.bincount(written, minlength=16)
    assert counts[12:].sum() == 0
    assert all(70 < int(count) < 130 for count in counts[:12])  # 100 expected, sd 8.2
