"""supervised_contrast and PixelContrastLoss against brute-force float64 references."""

import math

import pytest
import torch
import torch.nn.functional as F

from protoseg.losses import PixelContrastLoss, memory_contrast, supervised_contrast
from protoseg.prototypes import PixelQueue


def reference_contrast(anchors, labels, contrast=None, contrast_labels=None, temperature=0.1,
                       base_temperature=0.07, anchor_valid=None, contrast_valid=None):  # fmt: skip
    """Eq. 3 of ContrastiveSeg with Python loops in float64."""
    anchors = anchors.double().tolist()
    labels = labels.tolist()
    anchor_valid = [True] * len(labels) if anchor_valid is None else anchor_valid.tolist()
    exclude_self = contrast is None
    if contrast is None:
        contrast, contrast_labels, contrast_valid = anchors, labels, anchor_valid
    else:
        contrast = contrast.double().tolist()
        contrast_labels = contrast_labels.tolist()
        contrast_valid = [True] * len(contrast) if contrast_valid is None else contrast_valid.tolist()

    def similarity(a, b):
        return sum(x * y for x, y in zip(a, b)) / temperature

    per_anchor = []
    for a, (vector, label) in enumerate(zip(anchors, labels)):
        if not anchor_valid[a]:
            continue
        negatives = [j for j in range(len(contrast)) if contrast_valid[j] and contrast_labels[j] != label]
        positives = [
            j for j in range(len(contrast))
            if contrast_valid[j] and contrast_labels[j] == label and not (exclude_self and j == a)
        ]  # fmt: skip
        if not positives:
            continue
        negative_sum = sum(math.exp(similarity(vector, contrast[j])) for j in negatives)
        terms = []
        for p in positives:
            positive = math.exp(similarity(vector, contrast[p]))
            terms.append(-math.log(positive / (positive + negative_sum)))
        per_anchor.append(temperature / base_temperature * sum(terms) / len(terms))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def unit(*shape, generator=None, dtype=torch.float32):
    return F.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)


def test_in_batch_matches_reference_and_excludes_self():
    generator = torch.Generator().manual_seed(1)
    anchors = unit(14, 6, generator=generator)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 1, 5])  # classes 3 and 5: no positive
    loss = supervised_contrast(anchors, labels)
    assert loss.item() == pytest.approx(reference_contrast(anchors, labels), rel=1e-5)
    # the same rows passed as an explicit contrast set are NOT self-excluded
    explicit = supervised_contrast(anchors, labels, anchors, labels)
    assert explicit.item() == pytest.approx(reference_contrast(anchors, labels, anchors, labels), rel=1e-5)
    assert abs(explicit.item() - loss.item()) > 1e-3


@pytest.mark.parametrize("temperature, base_temperature", [(0.1, 0.07), (0.07, 0.07), (0.5, 0.2)])
def test_against_queue_matches_reference_with_empty_slots(temperature, base_temperature):
    generator = torch.Generator().manual_seed(2)
    anchors = unit(9, 5, generator=generator)
    labels = torch.tensor([0, 1, 1, 2, 2, 2, 3, 0, 4])
    contrast = unit(20, 5, generator=generator)
    contrast_labels = torch.arange(4).repeat_interleave(5)  # class 4 has no queue entry
    contrast_valid = torch.rand(20, generator=generator) > 0.3
    loss = supervised_contrast(anchors, labels, contrast, contrast_labels, temperature, base_temperature,
                               contrast_valid=contrast_valid)  # fmt: skip
    expected = reference_contrast(anchors, labels, contrast, contrast_labels, temperature, base_temperature,
                                  contrast_valid=contrast_valid)  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_memory_contrast_equals_flat_contrast_and_reference():
    generator = torch.Generator().manual_seed(8)
    classes, dim = 4, 5
    banks = [
        (unit(classes, 3, dim, generator=generator), torch.rand(classes, 3, generator=generator) > 0.4),
        (unit(classes, 6, dim, generator=generator), torch.rand(classes, 6, generator=generator) > 0.4),
    ]
    banks[0][1][2] = False
    banks[1][1][2] = False  # class 2: nothing in memory, its anchors have no positive
    anchors = unit(11, dim, generator=generator, dtype=torch.float64).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 1, 2, 3, 3, 0])
    anchor_valid = torch.arange(11) != 4
    rows = torch.cat([queue.reshape(-1, dim) for queue, _ in banks])
    row_labels = torch.cat([torch.arange(classes).repeat_interleave(queue.shape[1]) for queue, _ in banks])
    row_valid = torch.cat([valid.flatten() for _, valid in banks])
    temperatures = (0.07, 0.1)
    loss = memory_contrast(anchors, labels, banks, *temperatures, anchor_valid)
    flat = supervised_contrast(anchors, labels, rows, row_labels, *temperatures, anchor_valid, row_valid)
    expected = reference_contrast(anchors.detach(), labels, rows, row_labels, *temperatures,
                                  anchor_valid, row_valid)  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert flat.item() == pytest.approx(expected, rel=1e-9)
    against_memory = lambda x: memory_contrast(x, labels, banks, *temperatures, anchor_valid)  # noqa: E731
    assert torch.autograd.gradcheck(against_memory, (anchors,))
    empty = [(queue, torch.zeros_like(valid)) for queue, valid in banks]
    nothing = memory_contrast(anchors, labels, empty)
    assert nothing.item() == 0.0 and nothing.requires_grad


def naive_memory_contrast(anchors, labels, banks, temperature, base_temperature, anchor_valid):
    """Eq. 3 against class-structured queues, one anchor and queue row at a time, float64 autograd."""
    rows = [
        (queue[c, s].double(), c)
        for queue, valid in banks
        for c in range(queue.shape[0])
        for s in range(queue.shape[1])
        if valid[c, s]
    ]  # fmt: skip
    per_anchor = []
    for a, label in enumerate(labels.tolist()):
        positives = [row for row, c in rows if c == label]
        if not anchor_valid[a] or not positives:
            continue
        negative_sum = sum((torch.exp(anchors[a] @ row / temperature) for row, c in rows if c != label),
                           torch.zeros((), dtype=torch.float64))  # fmt: skip
        terms = []
        for row in positives:
            positive = torch.exp(anchors[a] @ row / temperature)
            terms.append(-torch.log(positive / (positive + negative_sum)))
        per_anchor.append(temperature / base_temperature * torch.stack(terms).mean())
    return torch.stack(per_anchor).mean() if per_anchor else anchors.sum() * 0


@pytest.mark.parametrize("only_class_zero_in_memory", [False, True])
def test_memory_contrast_gradient_equals_float64_brute_force(only_class_zero_in_memory):
    generator = torch.Generator().manual_seed(13)
    classes, dim = 4, 6
    banks = [
        (unit(classes, 3, dim, generator=generator), torch.rand(classes, 3, generator=generator) > 0.3),
        (unit(classes, 5, dim, generator=generator), torch.rand(classes, 5, generator=generator) > 0.3),
    ]
    for _, valid in banks:
        valid[2] = False  # class 2: empty queue, its anchors have no positive
        valid[0, 0] = True
        if only_class_zero_in_memory:  # class-0 anchors then have positives but no negative at all
            valid[1:] = False
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 3, 1, 2])
    anchor_valid = torch.arange(12) != 4
    temperatures = (0.07, 0.1)
    anchors = unit(12, dim, generator=generator, dtype=torch.float64)
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        given = anchors.to(dtype).requires_grad_()
        loss = memory_contrast(given, labels, banks, *temperatures, anchor_valid)
        (gradient,) = torch.autograd.grad(loss, given)
        expected_anchors = anchors.clone().requires_grad_()
        expected = naive_memory_contrast(expected_anchors, labels, banks, *temperatures, anchor_valid)
        (expected_gradient,) = torch.autograd.grad(expected, expected_anchors)
        assert loss.item() == pytest.approx(expected.item(), rel=tolerance, abs=tolerance)
        assert gradient.dtype == dtype and torch.isfinite(gradient).all()
        torch.testing.assert_close(gradient.double(), expected_gradient, rtol=tolerance, atol=tolerance)
        # anchors without positive (class 2, the invalid row 4) get no gradient
        assert (gradient[labels == 2] == 0).all() and (gradient[4] == 0).all()
        if only_class_zero_in_memory:
            assert loss.item() == pytest.approx(0.0, abs=tolerance) and (gradient == 0).all()
        else:
            assert expected_gradient.abs().max() > 1e-3  # the comparison is not between zeros


def test_padding_rows_change_nothing():
    generator = torch.Generator().manual_seed(3)
    anchors = unit(10, 4, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])
    padded = torch.cat([anchors, 50 * torch.randn(5, 4, generator=generator)])
    padded_labels = torch.cat([labels, torch.tensor([0, 1, 2, 0, 1])])
    valid = torch.arange(15) < 10
    expected = supervised_contrast(anchors, labels)
    padded_loss = supervised_contrast(padded, padded_labels, anchor_valid=valid)
    assert padded_loss.item() == pytest.approx(expected.item())


def test_no_positive_gives_connected_zero_without_nan():
    anchors = unit(4, 3).requires_grad_()
    loss = supervised_contrast(anchors, torch.arange(4))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(anchors.grad, torch.zeros_like(anchors))
    # all anchors of one class: no negatives, every term is -log(1) = 0
    same = unit(5, 3).requires_grad_()
    loss = supervised_contrast(same, torch.zeros(5, dtype=torch.long))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(same.grad).all()
    # an empty queue: nothing valid to contrast with
    empty = supervised_contrast(anchors, torch.arange(4), unit(6, 3), torch.zeros(6, dtype=torch.long),
                                contrast_valid=torch.zeros(6, dtype=torch.bool))  # fmt: skip
    assert empty.item() == 0.0 and empty.requires_grad


def test_large_similarities_stay_finite():
    anchors = (30 * unit(8, 4)).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = supervised_contrast(anchors, labels, temperature=0.01, base_temperature=0.01)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(anchors.grad).all()


def test_gradient_matches_finite_differences_float64():
    generator = torch.Generator().manual_seed(4)
    anchors = unit(7, 3, generator=generator, dtype=torch.float64).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    contrast = unit(6, 3, generator=generator, dtype=torch.float64)
    contrast_labels = torch.tensor([0, 1, 1, 2, 2, 3])
    assert torch.autograd.gradcheck(lambda x: supervised_contrast(x, labels), (anchors,))
    against_queue = lambda x: supervised_contrast(x, labels, contrast, contrast_labels)  # noqa: E731
    assert torch.autograd.gradcheck(against_queue, (anchors,))


def test_closed_form_gradients_with_padding_float64():
    """Both sides of a contrast set and the in-batch anchors, with padding rows and empty slots."""
    generator = torch.Generator().manual_seed(9)
    anchors = unit(8, 4, generator=generator, dtype=torch.float64).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 1, 0])
    anchor_valid = torch.tensor([True, True, True, False, True, True, True, False])
    contrast = unit(9, 4, generator=generator, dtype=torch.float64).requires_grad_()
    contrast_labels = torch.tensor([0, 1, 1, 2, 2, 3, 0, 1, 3])
    contrast_valid = torch.tensor([True, True, False, True, True, False, True, True, True])
    arguments = (0.2, 0.1)
    loss = supervised_contrast(anchors, labels, contrast, contrast_labels, *arguments, anchor_valid,
                               contrast_valid)  # fmt: skip
    expected = reference_contrast(anchors.detach(), labels, contrast.detach(), contrast_labels, *arguments,
                                  anchor_valid, contrast_valid)  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-9)

    def against_contrast(a, x):
        return supervised_contrast(a, labels, x, contrast_labels, *arguments, anchor_valid, contrast_valid)

    assert torch.autograd.gradcheck(against_contrast, (anchors, contrast))
    in_batch = lambda a: supervised_contrast(a, labels, anchor_valid=anchor_valid)  # noqa: E731
    assert torch.autograd.gradcheck(in_batch, (anchors,))
    in_batch(anchors).backward()
    assert (anchors.grad[~anchor_valid] == 0).all() and (anchors.grad[anchor_valid] != 0).any()
    # no gradient is computed (nor kept) without an input that requires it
    assert not supervised_contrast(anchors.detach(), labels).requires_grad


def test_bad_input_raises():
    with pytest.raises(ValueError, match="anchors"):
        supervised_contrast(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="contrast"):
        supervised_contrast(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), torch.zeros(5, 3),
                            torch.zeros(5, dtype=torch.long))  # fmt: skip
    with pytest.raises(ValueError, match="temperature"):
        PixelContrastLoss(temperature=0.0)


# --- PixelContrastLoss end to end: class-constant embeddings make the loss independent of which pixels
# are sampled, so the expected anchor set is known: n_view copies of each qualifying class vector.

CLASSES, HEIGHT, WIDTH, DIM, MAX_VIEWS, MAX_SAMPLES = 4, 12, 12, 6, 10, 40


def class_constant_batch(generator):
    label_map = torch.randint(0, CLASSES, (2, HEIGHT, WIDTH), generator=generator)
    label_map[0, :5] = 255
    label_map[1, label_map[1] == 3] = 1
    label_map[1, 0, :4] = 3  # 4 pixels of class 3 in image 1: not more than max_views, never sampled
    class_vectors = unit(CLASSES, DIM, generator=generator)
    embeddings = class_vectors[label_map.clamp(max=CLASSES - 1)].permute(0, 3, 1, 2).contiguous()
    labels_4x = label_map.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)  # stride 4 labels
    return label_map, class_vectors, embeddings, labels_4x


def expected_anchor_set(label_map, class_vectors):
    qualifying = [
        (b, c) for b in range(label_map.shape[0]) for c in range(CLASSES)
        if int((label_map[b] == c).sum()) > MAX_VIEWS
    ]  # fmt: skip
    n_view = min(MAX_SAMPLES // len(qualifying), MAX_VIEWS)
    classes = [c for _, c in qualifying for _ in range(n_view)]
    return class_vectors[classes], torch.tensor(classes)


def test_pixel_contrast_loss_in_batch_equals_reference():
    generator = torch.Generator().manual_seed(5)
    label_map, class_vectors, embeddings, labels_4x = class_constant_batch(generator)
    predictions = torch.randint(0, CLASSES, label_map.shape, generator=generator)
    criterion = PixelContrastLoss(max_samples=MAX_SAMPLES, max_views=MAX_VIEWS)
    embeddings.requires_grad_()
    loss = criterion(embeddings, labels_4x, predictions, generator=generator)
    anchors, labels = expected_anchor_set(label_map, class_vectors)
    assert loss.item() == pytest.approx(reference_contrast(anchors, labels), rel=1e-5)
    loss.backward()
    assert embeddings.grad.abs().sum() > 0


def test_pixel_contrast_loss_against_memory_equals_reference_and_queue_gets_no_grad():
    generator = torch.Generator().manual_seed(6)
    label_map, class_vectors, embeddings, labels_4x = class_constant_batch(generator)
    memory = PixelQueue(CLASSES, DIM, size=5, pixels_per_image=2)
    memory.pixel_queue.copy_(unit(CLASSES, 5, DIM, generator=generator))
    memory.segment_queue.copy_(unit(CLASSES, 5, DIM, generator=generator))
    memory.pixel_filled.copy_(torch.tensor([5, 2, 0, 3]))
    memory.segment_filled.copy_(torch.tensor([1, 5, 4, 0]))
    rows, row_labels, row_valid = [], [], []
    for c in range(CLASSES):
        for queue, filled in (
            (memory.segment_queue, memory.segment_filled), (memory.pixel_queue, memory.pixel_filled)
        ):  # fmt: skip
            rows.append(queue[c])
            row_labels += [c] * 5
            row_valid += [slot < int(filled[c]) for slot in range(5)]
    anchors, labels = expected_anchor_set(label_map, class_vectors)
    expected = reference_contrast(anchors, labels, torch.cat(rows), torch.tensor(row_labels), 0.07, 0.07,
                                  contrast_valid=torch.tensor(row_valid))  # fmt: skip

    criterion = PixelContrastLoss(max_samples=MAX_SAMPLES, max_views=MAX_VIEWS, memory_temperature=0.07)
    embeddings.requires_grad_()
    loss = criterion(embeddings, labels_4x, None, memory=memory, generator=generator)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert embeddings.grad.abs().sum() > 0
    for buffer in memory.buffers():
        assert not buffer.requires_grad and buffer.grad is None


def test_no_class_qualifies_gives_zero_with_gradient_path():
    generator = torch.Generator().manual_seed(7)
    embeddings = unit(2, 8, 8, 5, generator=generator).permute(0, 3, 1, 2).requires_grad_()
    labels = torch.randint(0, 8, (2, 8, 8), generator=generator)  # ~8 pixels per class <= max_views
    labels[:, 0] = 255
    criterion = PixelContrastLoss(max_views=30)
    for memory in (None, PixelQueue(8, 5, size=4)):
        loss = criterion(embeddings, labels, memory=memory, generator=generator, num_classes=8)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.isfinite(embeddings.grad).all()
    all_ignored = torch.full((2, 8, 8), 255)
    assert criterion(embeddings, all_ignored, generator=generator).item() == 0.0
