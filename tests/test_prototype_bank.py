import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from protoseg.prototypes import PrototypeBank


def reference_sinkhorn(scores: torch.Tensor, epsilon: float, num_iters: int) -> torch.Tensor:
    """Released-code Sinkhorn in float64 on one class's (N_c, K) similarities."""
    q = torch.exp(scores.double() / epsilon).t().clone()
    num_columns, num_rows = q.shape
    q /= q.sum()
    for _ in range(num_iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= num_columns
        q /= q.sum(dim=0, keepdim=True)
        q /= num_rows
    return (q * num_rows).t()


def random_pixels(num_pixels: int, num_classes: int, dim: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(num_pixels, dim, generator=generator), dim=1)
    labels = torch.randint(0, num_classes, (num_pixels,), generator=generator)
    labels[torch.rand(num_pixels, generator=generator) < 0.15] = 255
    labels[:2] = torch.tensor([-1, num_classes])  # also outside [0, C): ignored
    correct = torch.rand(num_pixels, generator=generator) < 0.6
    return embeddings, labels, correct


def test_prototypes_are_unit_norm_buffers_in_the_state_dict():
    bank = PrototypeBank(4, 3, 8, generator=torch.Generator().manual_seed(0))
    assert bank.prototypes.shape == (4, 3, 8)
    torch.testing.assert_close(bank.prototypes.norm(dim=-1), torch.ones(4, 3))
    assert list(bank.parameters()) == []
    assert "prototypes" in bank.state_dict()
    other = PrototypeBank(4, 3, 8, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other.prototypes, bank.prototypes)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.prototypes, bank.prototypes)
    same_seed = PrototypeBank(4, 3, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same_seed.prototypes, bank.prototypes)


def test_similarities_and_own_class_similarities_match_loops():
    num_classes, num_prototypes, dim = 5, 3, 6
    bank = PrototypeBank(num_classes, num_prototypes, dim)
    embeddings, labels, _ = random_pixels(70, num_classes, dim, seed=1)
    similarities = bank.similarities(embeddings)
    own = bank.own_class_similarities(embeddings, labels, group_size=4)
    x, p = embeddings.double(), bank.prototypes.double()
    for n in range(70):
        for c in range(num_classes):
            for k in range(num_prototypes):
                expected = sum(float(x[n, d] * p[c, k, d]) for d in range(dim))
                assert math.isclose(float(similarities[n, c, k]), expected, abs_tol=1e-6)
        if 0 <= labels[n] < num_classes:
            for k in range(num_prototypes):
                assert math.isclose(float(own[n, k]), float(similarities[n, labels[n], k]), abs_tol=1e-6)


def test_own_class_similarities_work_does_not_grow_with_classes():
    num_pixels, num_prototypes, dim, group_size = 4096, 10, 16, 64
    flops = {}
    for num_classes in (19, 150):
        bank = PrototypeBank(num_classes, num_prototypes, dim)
        embeddings, labels, _ = random_pixels(num_pixels, num_classes, dim, seed=2)
        counter = FlopCounterMode(display=False)
        with counter:
            bank.own_class_similarities(embeddings, labels, group_size=group_size)
        flops[num_classes] = counter.get_total_flops()
        # One grouped product over ceil(N / group) + C padded groups: the N * K * D useful
        # multiply-adds plus at most C * group padding rows, never N * C * K * D.
        groups = num_pixels // group_size + num_classes
        assert flops[num_classes] == 2 * groups * group_size * num_prototypes * dim
    assert flops[150] < 2 * num_pixels * 19 * num_prototypes * dim  # below the full matmul even at C=19


def test_cluster_equals_separate_reference_sinkhorn_per_class():
    num_classes, num_prototypes, dim = 4, 3, 5
    bank = PrototypeBank(num_classes, num_prototypes, dim, sinkhorn_epsilon=0.05, sinkhorn_iters=3)
    embeddings, labels, _ = random_pixels(90, num_classes, dim, seed=3)
    labels[labels == 2] = 1  # class 2 absent from the batch
    from_embeddings = bank.cluster(embeddings, labels)
    from_similarities = bank.cluster(embeddings, labels, similarities=bank.similarities(embeddings))
    assert torch.equal(from_embeddings.target, from_similarities.target)
    assert torch.equal(from_embeddings.update, from_embeddings.target)
    assert from_embeddings.target.dtype == torch.int64
    valid = (labels >= 0) & (labels < num_classes)
    assert (from_embeddings.target[~valid] == -1).all()
    x, p = embeddings.double(), bank.prototypes.double()
    for c in range(num_classes):
        rows = [n for n in range(90) if labels[n] == c]
        if not rows:
            continue
        scores = torch.tensor([[float(x[n] @ p[c, k]) for k in range(num_prototypes)] for n in rows])
        expected = reference_sinkhorn(scores, 0.05, 3).argmax(dim=1)
        assert from_embeddings.target[rows].tolist() == expected.tolist()
    assert torch.equal(bank.assign(embeddings, labels), from_embeddings.update)


def test_nearest_clustering_assigns_the_nearest_own_class_prototype_without_equipartition():
    num_classes, num_prototypes, dim = 3, 4, 6
    bank = PrototypeBank(num_classes, num_prototypes, dim, clustering="nearest")
    sinkhorn_bank = PrototypeBank(num_classes, num_prototypes, dim)
    sinkhorn_bank.load_state_dict(bank.state_dict())
    embeddings, labels, _ = random_pixels(300, num_classes, dim, seed=8)
    # every pixel of class 0 sits next to its prototype 1: nearest keeps them all there
    labels[:150] = 0
    embeddings[:150] = F.normalize(bank.prototypes[0, 1] + 0.05 * embeddings[:150], dim=1)
    assignment = bank.cluster(embeddings, labels)
    valid = (labels >= 0) & (labels < num_classes)
    x, p = embeddings.double(), bank.prototypes.double()
    for n in range(300):
        if valid[n]:
            scores = [float(x[n] @ p[int(labels[n]), k]) for k in range(num_prototypes)]
            assert int(assignment.target[n]) == max(range(num_prototypes), key=scores.__getitem__)
        else:
            assert int(assignment.target[n]) == -1
    assert (assignment.target[:150] == 1).all()
    # Sinkhorn's column constraint moves many of the same pixels onto the class's other prototypes
    spread = torch.bincount(sinkhorn_bank.cluster(embeddings, labels).target[:150], minlength=num_prototypes)
    assert spread[1] < 120 and (spread > 0).sum() >= 2
    assert "clustering=nearest" in repr(bank)


def test_gumbel_assignment_reproduces_released_gumbel_softmax():
    num_classes, num_prototypes, dim = 3, 10, 8
    bank = PrototypeBank(num_classes, num_prototypes, dim, assignment="gumbel")
    embeddings, labels, _ = random_pixels(400, num_classes, dim, seed=4)
    argmax_bank = PrototypeBank(num_classes, num_prototypes, dim, assignment="argmax")
    argmax_bank.load_state_dict(bank.state_dict())
    torch.manual_seed(123)
    assignment = bank.cluster(embeddings, labels)
    valid = (labels >= 0) & (labels < num_classes)
    # Targets stay the argmax (as released); only the update index is the Gumbel draw.
    assert torch.equal(assignment.target, argmax_bank.cluster(embeddings, labels).target)
    # Released: one class at a time, gumbel_softmax on Q; here Q of all pixels with the same draws.
    q = torch.zeros(400, num_prototypes)
    x, p = embeddings.double(), bank.prototypes.double()
    for c in range(num_classes):
        rows = [n for n in range(400) if labels[n] == c]
        q[rows] = reference_sinkhorn(x[rows] @ p[c].t(), 0.05, 3).float()
    torch.manual_seed(123)
    released = F.gumbel_softmax(q, tau=0.5, hard=True).argmax(dim=1)
    assert torch.equal(assignment.update[valid], released[valid])
    assert (assignment.update[~valid] == -1).all()
    changed = (assignment.update != assignment.target)[valid].float().mean()
    assert changed > 0.3  # Q treated as logits: the draw often differs from the argmax


def test_gumbel_draws_follow_the_generator():
    banks = [
        PrototypeBank(3, 4, 8, assignment="gumbel", generator=torch.Generator().manual_seed(9))
        for _ in range(2)
    ]
    embeddings, labels, _ = random_pixels(200, 3, 8, seed=5)
    first, second = (bank.assign(embeddings, labels) for bank in banks)
    assert torch.equal(first, second)


def reference_update(prototypes, embeddings, labels, assignments, correct, momentum):
    """Float64 momentum rule with loops over prototypes and pixels."""
    num_classes, num_prototypes, _ = prototypes.shape
    result = prototypes.double().clone()
    for c in range(num_classes):
        for k in range(num_prototypes):
            members = [
                embeddings[n].double()
                for n in range(len(labels))
                if labels[n] == c and assignments[n] == k and correct[n]
            ]
            if not members:
                continue
            mean_direction = F.normalize(torch.stack(members).sum(dim=0), dim=0)
            result[c, k] = F.normalize(momentum * result[c, k] + (1 - momentum) * mean_direction, dim=0)
    return result


def test_update_matches_float64_reference_and_moves_only_prototypes_with_correct_pixels():
    num_classes, num_prototypes, dim = 4, 3, 6
    bank = PrototypeBank(num_classes, num_prototypes, dim, momentum=0.9)
    embeddings, labels, correct = random_pixels(80, num_classes, dim, seed=6)
    labels[labels == 3] = 0  # class 3 receives nothing
    assignments = bank.assign(embeddings, labels)
    before = bank.prototypes.clone()
    expected = reference_update(before, embeddings, labels, assignments, correct, 0.9)
    bank.update(embeddings, labels, assignments, correct)
    torch.testing.assert_close(bank.prototypes.double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(bank.prototypes.norm(dim=-1), torch.ones(num_classes, num_prototypes))
    moved = (bank.prototypes != before).any(dim=-1)
    received = torch.zeros(num_classes, num_prototypes, dtype=torch.bool)
    for n in range(80):
        if 0 <= labels[n] < num_classes and correct[n]:
            received[labels[n], assignments[n]] = True
    assert torch.equal(moved, received)
    assert not received[3].any() and received.any()


def test_data_init_sets_each_prototype_to_its_first_pixels_then_follows_the_momentum_rule():
    num_classes, num_prototypes, dim = 4, 3, 6
    bank = PrototypeBank(num_classes, num_prototypes, dim, momentum=0.9, init="data")
    assert not bank.initialized.any() and "initialized" in bank.state_dict()
    assert "initialized" not in PrototypeBank(num_classes, num_prototypes, dim).state_dict()
    embeddings, labels, correct = random_pixels(80, num_classes, dim, seed=8)
    labels[labels == 3] = 0  # class 3 receives nothing
    assignments = bank.assign(embeddings, labels)
    before = bank.prototypes.clone()
    bank.update(embeddings, labels, assignments, correct)

    # first update: the mean of ALL assigned pixels of the class (float64 loops), correct or not
    received = torch.zeros(num_classes, num_prototypes, dtype=torch.bool)
    expected = before.double().clone()
    for c in range(num_classes):
        for k in range(num_prototypes):
            members = [embeddings[n].double() for n in range(80) if labels[n] == c and assignments[n] == k]
            if members:
                received[c, k] = True
                expected[c, k] = F.normalize(torch.stack(members).sum(dim=0), dim=0)
    assert not received[3].any() and received[:3].all()
    assert torch.equal(bank.initialized, received)
    torch.testing.assert_close(bank.prototypes.double(), expected, atol=1e-6, rtol=0)

    # afterwards: initialised prototypes follow the momentum rule on correct pixels only; class 3,
    # still pending, is initialised from all of its pixels
    embeddings, labels, correct = random_pixels(80, num_classes, dim, seed=9)
    assignments = bank.assign(embeddings, labels)
    current = bank.prototypes.clone()
    expected = reference_update(current, embeddings, labels, assignments, correct, 0.9)
    for k in range(num_prototypes):
        members = [embeddings[n].double() for n in range(80) if labels[n] == 3 and assignments[n] == k]
        expected[3, k] = F.normalize(torch.stack(members).sum(dim=0), dim=0)
    bank.update(embeddings, labels, assignments, correct)
    torch.testing.assert_close(bank.prototypes.double(), expected, atol=1e-6, rtol=0)
    assert bank.initialized.all()
    with pytest.raises(ValueError, match="init"):
        PrototypeBank(3, 2, 4, init="kmeans")


def test_ignored_pixels_change_nothing():
    num_classes, num_prototypes, dim = 3, 4, 6
    bank = PrototypeBank(num_classes, num_prototypes, dim, momentum=0.5)
    embeddings, labels, correct = random_pixels(120, num_classes, dim, seed=7)
    ignored = (labels < 0) | (labels >= num_classes)
    altered = embeddings.clone()
    altered[ignored] = torch.randn(int(ignored.sum()), dim) * 1e6
    altered[ignored.nonzero()[0]] = float("nan")
    results = []
    for pixels in (embeddings, altered):
        copy = PrototypeBank(num_classes, num_prototypes, dim, momentum=0.5)
        copy.load_state_dict(bank.state_dict())
        assignment = copy.cluster(pixels, labels)
        copy.update(pixels, labels, assignment.update, correct | ignored)
        results.append((assignment.target, copy.prototypes))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="assignment"):
        PrototypeBank(3, 2, 4, assignment="sample")
    with pytest.raises(ValueError, match="clustering"):
        PrototypeBank(3, 2, 4, clustering="kmeans")
    with pytest.raises(ValueError, match="num_prototypes"):
        PrototypeBank(3, 0, 4)
    with pytest.raises(ValueError, match="momentum"):
        PrototypeBank(3, 2, 4, momentum=1.5)
    with pytest.raises(ValueError, match="sinkhorn_epsilon"):
        PrototypeBank(3, 2, 4, sinkhorn_epsilon=0.0)
    bank = PrototypeBank(3, 2, 4)
    with pytest.raises(ValueError, match="similarities"):
        bank.cluster(torch.zeros(5, 4), torch.zeros(5, dtype=torch.long), similarities=torch.zeros(5, 6))


def test_clustering_runs_in_float32_under_autocast():
    bank = PrototypeBank(3, 4, 16)
    embeddings, labels, _ = random_pixels(200, 3, 16, seed=8)
    expected = bank.cluster(embeddings, labels)
    similarities = bank.similarities(embeddings)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        standalone = bank.cluster(embeddings, labels)
        from_similarities = bank.cluster(embeddings, labels, similarities=similarities)
    assert torch.equal(standalone.target, expected.target)
    assert torch.equal(from_similarities.target, expected.target)
