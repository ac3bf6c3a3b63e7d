import math

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from protoseg.methods.rca import RCAMethod
from protoseg.models.rca import RCANetwork
from protoseg.ops import kmeans

CLASSES = 3


class TinyConvBackbone(nn.Module):
    """Two conv levels (stride 2 then 4); forward returns the list of levels."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.second = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.out_channels = [6, 8]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        first = torch.relu(self.first(images))
        return [first, torch.relu(self.second(first))]


NETWORK_OPTIONS = ("num_prototypes", "aggregation", "attention_scale", "region_mask")


def make_method(**options) -> RCAMethod:
    torch.manual_seed(0)
    options = {"num_prototypes": 2, "memory_size": 4, "score_threshold": 0.0, **options}
    network_options = {key: options.pop(key) for key in NETWORK_OPTIONS if key in options}
    return RCAMethod(RCANetwork(TinyConvBackbone(), CLASSES, **network_options), **options)


def run(method: RCAMethod, images: torch.Tensor, tags: torch.Tensor, iteration: int = 0) -> dict:
    """A training forward, then (in training mode) the after-step memory write, as the trainer does."""
    outputs = method({"image": images, "tags": tags}, iteration)
    if method.training:
        method.after_step(iteration)
    return outputs


def batch(size: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, 16, 16, generator=generator)
    tags = torch.zeros(size, CLASSES)
    tags[torch.arange(size), torch.arange(size) % CLASSES] = 1
    tags[0, 1] = 1
    return images, tags


def multilabel_soft_margin(scores: torch.Tensor, tags: torch.Tensor) -> float:
    total = 0.0
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            s, y = float(scores[b, c]), float(tags[b, c])
            total -= y * math.log(1 / (1 + math.exp(-s))) + (1 - y) * math.log(1 / (1 + math.exp(s)))
    return total / scores.numel()


def test_end_to_end_forward_backward_refresh():
    method = make_method()
    images, tags = batch()
    for iteration in range(3):
        outputs = run(method, images, tags, iteration=iteration)
        assert torch.isfinite(outputs["loss"])
        method.zero_grad()
        outputs["loss"].backward()
    for name, parameter in method.network.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert outputs["contrast"] > 0 and outputs["mixup"] > 0  # the memory is filled by now

    cams_before = method.cams(images).detach()
    method.refresh(generator=torch.Generator().manual_seed(3))
    memory = method.memory
    expected = kmeans(memory.memory, 2, iters=method.kmeans_iters, generator=torch.Generator().manual_seed(3),
                      valid=memory.valid)
    aggregation = method.network.aggregation
    torch.testing.assert_close(aggregation.prototypes, expected.reshape(-1, 8))
    assert aggregation.prototype_valid.tolist() == (memory.count > 0).repeat_interleave(2).tolist()
    cams_after = method.cams(images)
    assert cams_after.shape == (4, CLASSES, 4, 4)
    assert not torch.allclose(cams_before, cams_after)  # the aggregation now contributes
    outputs = run(method, images, tags, iteration=3)
    outputs["loss"].backward()
    assert torch.isfinite(outputs["loss"])


def test_loss_terms_match_an_independent_computation():
    method = make_method(contrast_weight=0.5, aux_weight=0.3)
    images, tags = batch()
    run(method, images, tags)  # fill the memory
    method.eval()  # no enqueue, so the memory is the same for both passes
    outputs = run(method, images, tags, iteration=10)
    with torch.no_grad():
        network_outputs = method.network(images)
    final = network_outputs["cams"].mean(dim=(2, 3))
    auxiliary = network_outputs["aux_cams"].mean(dim=(2, 3))
    assert outputs["cls"].item() == pytest.approx(multilabel_soft_margin(final, tags), rel=1e-5)
    assert outputs["cls_aux"].item() == pytest.approx(multilabel_soft_margin(auxiliary, tags), rel=1e-5)
    expected = outputs["cls"] + 0.3 * outputs["cls_aux"] + 0.5 * outputs["mixup"]
    assert outputs["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_region_embeddings_pool_features_over_above_mean_cam_pixels():
    for mode in ("paper", "released"):
        method = make_method(region_mask=mode)
        images, tags = batch()
        with torch.no_grad():
            outputs = method.network(images)
            embeddings, valid = method.region_embeddings(outputs["features"], outputs["aux_cams"], tags)
        features, cams = outputs["features"].double(), outputs["aux_cams"].double()
        if mode == "released":
            cams = cams.softmax(dim=1)
        for b in range(4):
            for c in range(CLASSES):
                threshold = cams[b, c].mean()
                pixels = [(y, x) for y in range(4) for x in range(4) if cams[b, c, y, x] > threshold]
                if pixels:
                    expected = torch.stack([features[b, :, y, x] for y, x in pixels]).mean(0)
                    torch.testing.assert_close(embeddings[b, c].double(), expected, rtol=1e-5, atol=1e-6)
                assert bool(valid[b, c]) == (bool(pixels) and tags[b, c] == 1)


def test_a_constant_cam_gives_an_empty_invalid_region_without_nan():
    method = make_method()
    features = torch.randn(2, 8, 4, 4)
    aux_cams = torch.randn(2, CLASSES, 4, 4)
    aux_cams[1, 2] = 0.5  # no pixel above the mean
    tags = torch.ones(2, CLASSES)
    embeddings, valid = method.region_embeddings(features, aux_cams, tags)
    assert method.network.region_masks(aux_cams)[1, 2].sum() == 0
    assert not valid[1, 2] and valid.sum() == 2 * CLASSES - 1
    assert torch.isfinite(embeddings).all() and torch.all(embeddings[1, 2] == 0)


def test_memory_receives_only_tagged_confident_regions_and_only_in_training():
    method = make_method(score_threshold=1.1)  # sigmoid never exceeds 1.1
    images, tags = batch()
    run(method, images, tags)
    assert method.memory.count.sum() == 0

    method = make_method(score_threshold=0.0)
    run(method, images, tags)
    with torch.no_grad():
        outputs = method.network(images)
        _, valid = method.region_embeddings(outputs["features"], outputs["aux_cams"], tags)
    assert method.memory.count.tolist() == valid.sum(dim=0).tolist()
    memory_before = method.memory.memory.clone()
    method.eval()
    run(method, images, tags)
    assert torch.equal(method.memory.memory, memory_before)


def test_contrast_counts_only_from_the_start_iteration():
    method = make_method(contrast_start_iter=5, contrast_weight=1.0)
    images, tags = batch()
    run(method, images, tags, iteration=0)
    method.eval()
    early = run(method, images, tags, iteration=4)
    assert early["contrast"] == 0 and early["mixup"] == 0
    assert early["loss"].item() == pytest.approx((early["cls"] + 0.4 * early["cls_aux"]).item(), rel=1e-6)
    late = run(method, images, tags, iteration=5)
    assert late["mixup"] > 0
    assert late["loss"].item() > early["loss"].item()


def test_released_aggregation_trains_end_to_end():
    method = make_method(aggregation="released")
    images, tags = batch()
    run(method, images, tags)["loss"].backward()
    method.refresh(generator=torch.Generator().manual_seed(0))
    outputs = run(method, images, tags, iteration=1)
    outputs["loss"].backward()
    assert torch.isfinite(outputs["loss"])
    assert method.network.aggregation.query.weight.grad is not None


def test_training_step_has_no_host_synchronisation():
    method = make_method()
    images, tags = batch()
    run(method, images, tags)
    method.refresh(generator=torch.Generator().manual_seed(0))
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run(method, images, tags, iteration=1)
    names = {event.key for event in profiler.key_averages()}
    assert "aten::index_put_" in names  # the enqueue ran inside the profiled step
    forbidden = {"aten::nonzero", "aten::item", "aten::_local_scalar_dense"} & names
    assert not forbidden, forbidden


def test_bad_options_raise():
    with pytest.raises(TypeError, match="momentun"):
        make_method(momentun=0.9)
    network = RCANetwork(TinyConvBackbone(), CLASSES, num_prototypes=2)
    with pytest.raises(ValueError, match="memory_size"):
        RCAMethod(network, memory_size=1)
    with pytest.raises(ValueError, match="tags"):
        run(RCAMethod(network, memory_size=4), torch.randn(2, 3, 16, 16), torch.zeros(2, CLASSES + 1))
    with pytest.raises(ValueError, match="region_mask"):
        RCANetwork(TinyConvBackbone(), CLASSES, region_mask="soft")
