"""PPC (pixel-to-prototype contrast) against brute-force float64 references written here."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.functional import normalize

from protoseg.losses import PixelToPrototypeContrast
from protoseg.losses.ppc import (
    cam_pseudo_labels,
    hard_pixel_weights,
    pixel_to_prototype_loss,
    semi_hard_prototype_mask,
)
from protoseg.ops import topk_weighted_prototypes

TAU = 0.1


# ----------------------------------------------------------------------------- references (loops, float64)


def reference_view(cam, features, tags, bg_threshold, top_k):
    """Pixel list of one view: embeddings, labels, prototypes, valid, by explicit loops."""
    batch, channels, height, width = cam.shape
    num_classes = channels - 1
    normalized = torch.zeros(batch, num_classes, height, width, dtype=torch.float64)
    for b in range(batch):
        for c in range(num_classes):
            values = cam[b, c + 1].double().clamp_min(0)
            low, high = values.min(), values.max()
            normalized[b, c] = (values - low) / max(float(high - low), 1e-5) * float(tags[b, c])
    embeddings, labels, confidences = [], [], []
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                scores = [bg_threshold] + [float(normalized[b, c, i, j]) for c in range(num_classes)]
                best = 0
                for index, score in enumerate(scores):
                    if score > scores[best]:
                        best = index
                labels.append(best)
                foreground = [float(normalized[b, c, i, j]) for c in range(num_classes)]
                confidences.append([1.0 - max(foreground)] + foreground)
                vector = features[b, :, i, j].double()
                embeddings.append(vector / vector.norm())
    prototypes, valid = reference_prototypes(confidences, embeddings, top_k)
    return torch.stack(embeddings), labels, prototypes, valid


def reference_prototypes(confidences, embeddings, top_k):
    num_prototypes = len(confidences[0])
    prototypes, valid = [], []
    for m in range(num_prototypes):
        ranked = sorted(range(len(embeddings)), key=lambda i: -confidences[i][m])[:top_k]
        total = sum(confidences[i][m] for i in ranked)
        weighted = sum(confidences[i][m] * embeddings[i].detach() for i in ranked)
        valid.append(total > 0)
        if total > 0:
            mean = weighted / total
            prototypes.append(mean / mean.norm())
        else:
            prototypes.append(torch.zeros_like(embeddings[0]))
    return torch.stack(prototypes), valid


def reference_contrast(vector, label, prototypes, valid, denominator=None, repeat_positive=False):
    """F(v, y, P) with the denominator over ``denominator`` (default: the valid prototypes)."""
    logits = [vector @ prototypes[m] / TAU for m in range(len(prototypes))]
    members = [m for m in range(len(prototypes)) if valid[m]] if denominator is None else denominator
    terms = [torch.exp(logits[m]) for m in members]
    if repeat_positive or label not in members:
        terms.append(torch.exp(logits[label]))
    return -(logits[label] - torch.log(sum(terms)))


def reference_cross_mean(embeddings, labels, prototypes, valid):
    losses = [
        reference_contrast(embeddings[i], labels[i], prototypes, valid)
        for i in range(len(labels))
        if valid[labels[i]]
    ]
    return sum(losses) / max(len(losses), 1) if losses else embeddings.sum() * 0


def reference_intra(embeddings, labels, prototypes, valid, mining, generator):
    """Intra-view loss; the random draws are replayed with the module's selectors and generator."""
    num_prototypes = len(prototypes)
    similarity = (embeddings @ prototypes.t()).detach()
    mask = semi_hard_prototype_mask(similarity, torch.tensor(labels), torch.tensor(valid), mining, generator)
    usable = torch.tensor([valid[y] for y in labels])
    positive = similarity[torch.arange(len(labels)), torch.tensor(labels)]
    weights = hard_pixel_weights(positive, torch.tensor(labels), usable, num_prototypes, mining, generator)
    class_means = []
    for c in range(num_prototypes):
        numerator, denominator = 0.0, 0.0
        for i, label in enumerate(labels):
            if label != c or not valid[label] or weights[i] == 0:
                continue
            members = [m for m in range(num_prototypes) if mask[i, m] and valid[m]]
            loss = reference_contrast(embeddings[i], label, prototypes, valid, members, mining == "released")
            numerator = numerator + float(weights[i]) * loss
            denominator += float(weights[i])
        if denominator > 0:
            class_means.append(numerator / denominator)
    return sum(class_means) / len(class_means) if class_means else embeddings.sum() * 0


def make_views(seed, batch=2, num_classes=4, size=4, dim=8, flat_target_class=None):
    """Positive CAMs (one min and one max per image and class, so top-K ties only at 0 or at 1)."""
    generator = torch.Generator().manual_seed(seed)
    cam_shape = (batch, num_classes + 1, size, size)
    cams = [torch.rand(cam_shape, generator=generator, dtype=torch.float64) + 0.05 for _ in "st"]
    features = [torch.randn(batch, dim, size, size, generator=generator, dtype=torch.float64) for _ in "st"]
    tags = torch.zeros(batch, num_classes, dtype=torch.float64)
    tags[0, [0, 2]] = 1
    tags[1, [2, 3]] = 1
    if flat_target_class is not None:
        cams[1][:, flat_target_class + 1] = 0.3
    return cams[0], features[0], cams[1], features[1], tags


# ----------------------------------------------------------------------------- F and prototype estimation


def test_contrast_function_matches_reference_with_masks_and_repeated_positive():
    generator = torch.Generator().manual_seed(0)
    embeddings = normalize(torch.randn(7, 5, generator=generator, dtype=torch.float64), dim=1)
    prototypes = normalize(torch.randn(4, 5, generator=generator, dtype=torch.float64), dim=1)
    valid = torch.tensor([True, True, False, True])
    labels = torch.tensor([0, 1, 3, 2, 0, 3, 1])
    denominator = torch.rand(7, 4, generator=generator) > 0.5
    for mask, repeat in [(None, False), (denominator, False), (denominator, True)]:
        loss, usable = pixel_to_prototype_loss(embeddings, labels, prototypes, valid, TAU, mask, repeat)
        for i in range(7):
            label = int(labels[i])
            assert bool(usable[i]) == bool(valid[label])
            if not valid[label]:
                assert loss[i] == 0
                continue
            members = None if mask is None else [m for m in range(4) if mask[i, m] and valid[m]]
            expected = reference_contrast(embeddings[i], label, prototypes, valid.tolist(), members, repeat)
            torch.testing.assert_close(loss[i], expected, rtol=1e-12, atol=1e-12)


def test_contrast_function_closed_form():
    # two orthogonal prototypes, pixel on the first: F = -log(e^10 / (e^10 + e^0)) = log(1 + e^-10)
    prototypes = torch.eye(2, dtype=torch.float64)
    valid = torch.tensor([True, True])
    loss, _ = pixel_to_prototype_loss(prototypes[:1], torch.tensor([0]), prototypes, valid, TAU)
    assert math.isclose(float(loss), math.log1p(math.exp(-10)), rel_tol=0, abs_tol=1e-13)


def test_topk_prototypes_match_reference_over_the_whole_batch():
    generator = torch.Generator().manual_seed(1)
    confidence = torch.rand(40, 3, generator=generator, dtype=torch.float64)
    confidence[:, 2] = 0  # a class without confident pixels
    embeddings = normalize(torch.randn(40, 6, generator=generator, dtype=torch.float64), dim=1)
    prototypes, valid = topk_weighted_prototypes(confidence, embeddings, top_k=5)
    expected, expected_valid = reference_prototypes(confidence.tolist(), list(embeddings), 5)
    assert valid.tolist() == expected_valid == [True, True, False]
    torch.testing.assert_close(prototypes, expected, rtol=1e-12, atol=1e-12)
    # top-K is a real restriction: using every pixel gives another prototype
    everything, _ = topk_weighted_prototypes(confidence, embeddings, top_k=40)
    assert (everything[0] - prototypes[0]).abs().max() > 1e-3
    # a top_k above the number of pixels is clamped
    clamped, _ = topk_weighted_prototypes(confidence, embeddings, top_k=1000)
    torch.testing.assert_close(clamped, everything)


def test_pseudo_labels_and_confidence_match_reference():
    cam_s, features_s, _, _, tags = make_views(2)
    labels, confidence = cam_pseudo_labels(cam_s, tags, 0.2)
    _, expected_labels, _, _ = reference_view(cam_s, features_s, tags, 0.2, top_k=8)
    assert labels.flatten().tolist() == expected_labels
    # untagged classes are zero, background confidence is 1 - max foreground
    assert torch.all(confidence[0, 2] == 0) and torch.all(confidence[1, 1] == 0)
    torch.testing.assert_close(confidence[:, 0], 1 - confidence[:, 1:].amax(dim=1))
    assert set(labels[0].unique().tolist()) <= {0, 1, 3}


# ----------------------------------------------------------------------------- full loss vs reference


@pytest.mark.parametrize("mining", ["paper", "released"])
@pytest.mark.parametrize("flat_target_class", [None, 2])
def test_full_loss_and_gradients_match_reference(mining, flat_target_class):
    cam_s, features_s, cam_t, features_t, tags = make_views(3, flat_target_class=flat_target_class)
    features_s.requires_grad_(True)
    features_t.requires_grad_(True)
    cam_s.requires_grad_(True)
    contrast = PixelToPrototypeContrast(
        top_k=8, cross_weight=0.3, intra_weight=0.7, mining=mining, generator=torch.Generator().manual_seed(9)
    )
    terms = contrast(cam_s, features_s, cam_t, features_t, tags)
    terms["loss"].backward()
    assert cam_s.grad is None  # CAMs only feed pseudo labels and prototype selection (no_grad)
    gradient_s, gradient_t = features_s.grad.clone(), features_t.grad.clone()

    reference_features = [tensor.detach().clone().requires_grad_(True) for tensor in (features_s, features_t)]
    v_s, y_s, p_s, valid_s = reference_view(cam_s.detach(), reference_features[0], tags, 0.2, 8)
    v_t, y_t, p_t, valid_t = reference_view(cam_t, reference_features[1], tags, 0.2, 8)
    if flat_target_class is not None:
        assert not valid_t[flat_target_class + 1] and valid_s[flat_target_class + 1]
        assert (flat_target_class + 1) in y_s  # pixels whose positive is invalid in the other view exist
    cp = 0.5 * (reference_cross_mean(v_s, y_s, p_t, valid_t) + reference_cross_mean(v_t, y_t, p_s, valid_s))
    cc = 0.5 * (reference_cross_mean(v_s, y_t, p_s, valid_s) + reference_cross_mean(v_t, y_s, p_t, valid_t))
    replay = torch.Generator().manual_seed(9)
    intra_s = reference_intra(v_s, y_s, p_s, valid_s, mining, replay)
    intra_t = reference_intra(v_t, y_t, p_t, valid_t, mining, replay)
    intra = 0.5 * (intra_s + intra_t)
    torch.testing.assert_close(terms["cp"], cp.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(terms["cc"], cc.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(terms["intra"], intra.detach(), rtol=1e-10, atol=1e-10)
    total = 0.3 * (cp + cc) + 0.7 * intra
    torch.testing.assert_close(terms["loss"].detach(), total.detach(), rtol=1e-10, atol=1e-10)
    # gradients: into the features of both views, not through the (detached) prototypes
    total.backward()
    torch.testing.assert_close(gradient_s, reference_features[0].grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gradient_t, reference_features[1].grad, rtol=1e-9, atol=1e-12)
    assert gradient_s.abs().sum() > 0 and gradient_t.abs().sum() > 0


def test_gradient_would_differ_if_prototypes_carried_gradient():
    cam_s, features_s, cam_t, features_t, tags = make_views(4)
    features_s.requires_grad_(True)
    contrast = PixelToPrototypeContrast(top_k=8, cross_weight=1.0, intra_weight=0.0)
    contrast(cam_s, features_s, cam_t, features_t, tags)["loss"].backward()
    # same loss with prototypes that keep their graph: averaged embeddings, not detached
    attached = features_s.detach().clone().requires_grad_(True)
    v_s, y_s, _, valid_s = reference_view(cam_s, attached, tags, 0.2, 8)
    v_t, y_t, p_t, valid_t = reference_view(cam_t, features_t, tags, 0.2, 8)
    _, confidence = cam_pseudo_labels(cam_s, tags, 0.2)
    flat = confidence.permute(0, 2, 3, 1).flatten(0, 2)
    weights, indices = flat.t().topk(8, dim=1)
    p_s = normalize((weights.unsqueeze(-1) * v_s[indices]).sum(1), dim=1)
    cp = 0.5 * (reference_cross_mean(v_s, y_s, p_t, valid_t) + reference_cross_mean(v_t, y_t, p_s, valid_s))
    cc = 0.5 * (reference_cross_mean(v_s, y_t, p_s, valid_s) + reference_cross_mean(v_t, y_s, p_t, valid_t))
    (cp + cc).backward()
    assert (attached.grad - features_s.grad).abs().max() > 1e-4


# ----------------------------------------------------------------------------- mining and sampling invariants


def _random_similarity(seed, pixels, prototypes):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(pixels, prototypes, generator=generator, dtype=torch.float64) * 2 - 1


def test_paper_prototype_mining_counts_and_hardness():
    similarity = _random_similarity(5, 30, 21)
    valid = torch.ones(21, dtype=torch.bool)
    valid[[4, 17]] = False
    labels = torch.randint(0, 21, (30,), generator=torch.Generator().manual_seed(6))
    labels[labels == 4] = 0
    labels[labels == 17] = 1
    ever_chosen = torch.zeros(30, 21, dtype=torch.bool)
    first = None
    for seed in range(40):
        generator = torch.Generator().manual_seed(seed)
        mask = semi_hard_prototype_mask(similarity, labels, valid, "paper", generator)
        first = mask if first is None else first
        for i in range(30):
            negatives = [m for m in range(21) if valid[m] and m != labels[i]]
            by_similarity = sorted(negatives, key=lambda m: -float(similarity[i, m]))
            hardest = by_similarity[: math.ceil(0.6 * len(negatives))]
            chosen = set(torch.where(mask[i])[0].tolist())
            assert len(chosen) == math.ceil(len(hardest) / 2) == 6  # 18 negatives -> 11 hard -> 6
            assert chosen <= set(hardest)
        ever_chosen |= mask
    again = semi_hard_prototype_mask(similarity, labels, valid, "paper", torch.Generator().manual_seed(0))
    assert torch.equal(again, first)
    for i in range(30):  # every hard negative is drawn by some seed: the 50% are random, not fixed
        negatives = [m for m in range(21) if valid[m] and m != labels[i]]
        hardest = sorted(negatives, key=lambda m: -float(similarity[i, m]))[:11]
        assert set(torch.where(ever_chosen[i])[0].tolist()) == set(hardest)


def test_paper_prototype_mining_keeps_one_negative_when_one_exists():
    similarity = _random_similarity(7, 4, 3)
    valid = torch.tensor([True, True, False])
    mask = semi_hard_prototype_mask(similarity, torch.tensor([0, 1, 0, 1]), valid, "paper")
    assert mask.tolist() == [[False, True, False], [True, False, False]] * 2


@pytest.mark.parametrize(
    ("num_prototypes", "invalid", "window"),
    [(21, [], (3, 13)), (21, [2, 9], (2, 11)), (7, [1, 5], (0, 3)), (2, [], (0, 1))],
)
def test_released_prototype_mining_window(num_prototypes, invalid, window):
    similarity = _random_similarity(8, 25, num_prototypes)
    valid = torch.ones(num_prototypes, dtype=torch.bool)
    valid[invalid] = False
    labels = torch.zeros(25, dtype=torch.long)
    mask = semi_hard_prototype_mask(similarity, labels, valid, "released")
    num_valid = num_prototypes - len(invalid)
    assert window == (3 * num_valid // 21, max(13 * num_valid // 21, 3 * num_valid // 21 + 1))
    positive_inside = 0
    for i in range(25):
        valid_indices = [m for m in range(num_prototypes) if valid[m]]
        ranked = sorted(valid_indices, key=lambda m: -float(similarity[i, m]))
        assert set(torch.where(mask[i])[0].tolist()) == set(ranked[window[0] : window[1]])
        positive_inside += int(mask[i, 0])
    if num_prototypes == 21 and not invalid:
        assert 0 < positive_inside < 25  # the positive may fall inside the window


@pytest.mark.parametrize("mining", ["paper", "released"])
def test_hard_pixel_sampling_counts_and_ranks(mining):
    generator = torch.Generator().manual_seed(10)
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 1 + [3] * 12)
    labels = labels[torch.randperm(30, generator=generator)]
    similarity = torch.rand(30, generator=generator, dtype=torch.float64)
    usable = labels != 3
    usable[torch.where(labels == 3)[0][:5]] = True  # class 3: only 5 of its 12 pixels usable
    draws = []
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        weights = hard_pixel_weights(similarity, labels, usable, 4, mining, generator)
        draws.append(weights)
        assert torch.all(weights[~usable] == 0)
        for c in range(4):
            members = [i for i in range(30) if labels[i] == c and usable[i]]
            n = len(members)
            ascending = sorted(members, key=lambda i: float(similarity[i]))
            if mining == "paper":
                hard = set(ascending[: n // 2])
            else:
                hard = set(ascending[(6 * n) // 10 - n // 2 : (6 * n) // 10])
            assert len(hard) == n // 2
            random_part = [float(weights[i]) - (i in hard) for i in members]
            assert set(random_part) <= {0.0, 1.0}  # hard pixels drawn exactly once by the hard sampler
            assert sum(random_part) == n // 2  # plus n // 2 random pixels
    assert not torch.equal(draws[0], draws[1]) or not torch.equal(draws[1], draws[2])
    again = hard_pixel_weights(similarity, labels, usable, 4, mining, torch.Generator().manual_seed(0))
    assert torch.equal(again, draws[0])


def test_released_hard_pixel_ranks_for_ten_pixels():
    # ascending similarity ranks 1..5 (0-based) of 10: skip the hardest 10%, keep up to 60%
    labels = torch.zeros(10, dtype=torch.long)
    similarity = torch.arange(10, dtype=torch.float64).flip(0)  # pixel 9 is the hardest
    weights = hard_pixel_weights(similarity, labels, torch.ones(10, dtype=torch.bool), 1, "released")
    hard = {8, 7, 6, 5, 4}
    assert sum(float(weights[i]) - (i in hard) for i in range(10)) == 5
    assert all(weights[i] >= 1 for i in hard)


# ----------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("mining", ["paper", "released"])
def test_no_nan_without_tags_or_pixels(mining):
    cam_s, features_s, cam_t, features_t, _ = make_views(11)
    cam_s = cam_s.float()
    cam_t = cam_t.float()
    tag_cases = [[[0.0, 0, 0, 0], [0, 1, 0, 0]], [[0.0] * 4] * 2, [[1.0, 0, 0, 0], [0, 0, 0, 1]]]
    for tags in map(torch.tensor, tag_cases):
        flat_cam_t = cam_t.clone()
        flat_cam_t[:, 1] = 0.5  # a tagged class with a flat CAM: no pixel, invalid prototype
        features = [features_s.float().requires_grad_(True), features_t.float().requires_grad_(True)]
        contrast = PixelToPrototypeContrast(top_k=4, mining=mining)
        terms = contrast(cam_s, features[0], flat_cam_t, features[1], tags)
        terms["loss"].backward()
        for value in terms.values():
            assert torch.isfinite(value)
        assert torch.isfinite(features[0].grad).all() and torch.isfinite(features[1].grad).all()
    # without any tag every pixel is background, the only valid prototype: the cross terms are log(1) = 0;
    # the released intra-view window [0, 1) holds the positive, counted twice: log(2)
    untagged = PixelToPrototypeContrast(top_k=4, mining=mining)
    terms = untagged(cam_s, features_s, cam_t, features_t, torch.zeros(2, 4))
    assert terms["cp"] == 0 and terms["cc"] == 0
    expected_intra = math.log(2) if mining == "released" else 0.0
    assert math.isclose(float(terms["intra"]), expected_intra, abs_tol=1e-12)


def test_float16_features_are_computed_in_float32():
    cam_s, features_s, cam_t, features_t, tags = make_views(12)
    half = PixelToPrototypeContrast(top_k=8, mining="released")(
        cam_s.half(), features_s.half(), cam_t.half(), features_t.half(), tags
    )
    assert half["loss"].dtype == torch.float32 and torch.isfinite(half["loss"])


def test_autocast_does_not_lower_the_precision_of_the_contrast():
    cam_s, features_s, cam_t, features_t, tags = (view.float() for view in make_views(14))
    contrast = PixelToPrototypeContrast(top_k=8, mining="paper", generator=torch.Generator().manual_seed(0))
    plain = contrast(cam_s, features_s, cam_t, features_t, tags)
    contrast.generator.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # would run the similarity matmuls in bfloat16
        autocast = contrast(cam_s, features_s, cam_t, features_t, tags)
    for name in ("loss", "cp", "cc", "intra"):
        assert autocast[name].dtype == torch.float32
        torch.testing.assert_close(autocast[name], plain[name], rtol=1e-5, atol=1e-6)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="mining"):
        PixelToPrototypeContrast(mining="semi")
    with pytest.raises(ValueError, match="top_k"):
        PixelToPrototypeContrast(top_k=0)
    cam_s, features_s, cam_t, features_t, tags = make_views(13)
    contrast = PixelToPrototypeContrast()
    with pytest.raises(ValueError, match="features_target"):
        contrast(cam_s, features_s, cam_t, features_t[..., :3], tags)
    with pytest.raises(ValueError, match="tags"):
        contrast(cam_s, features_s, cam_t, features_t, tags[:, :3])


def test_no_host_synchronisation():
    cam_s, features_s, cam_t, features_t, tags = make_views(14, batch=2, size=8)
    features_s = features_s.float().requires_grad_(True)
    contrast = PixelToPrototypeContrast(top_k=8, generator=torch.Generator().manual_seed(0))
    for mining in ("paper", "released"):
        contrast.mining = mining
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            terms = contrast(cam_s.float(), features_s, cam_t.float(), features_t.float(), tags.float())
            terms["loss"].backward()
        names = {event.name for event in profile.events()}
        assert not names & {"aten::nonzero", "aten::item", "aten::_local_scalar_dense"}, mining
