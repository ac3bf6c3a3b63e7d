"""RCA as a plug-in (model.rca.base: cam | oaa | eps) and the release's parts as options: per-class
heads against separate stacks, the cosine aggregation and the per-image contrast reduction against float64
references, the query projection's place, the base's losses on both heads, OAA accumulating the final
head, the k-means and OAA refresh intervals, and the release's learning-rate groups."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from protoseg.config import load_config
from protoseg.engine.optim import build_optimizer
from protoseg.losses.memory_contrast import memory_contrast
from protoseg.losses.region_contrast import RegionContrastLoss
from protoseg.methods import DatasetInfo, RunInfo, build_method
from protoseg.models.aggregation import SemanticAggregation
from protoseg.models.rca import ReleasedHead
from protoseg.prototypes import RegionMemory
from protoseg.prototypes.attention_store import map_path, read_maps

TINY = [
    "model.method=rca",
    "model.backbone.name=tiny",
    "model.backbone.pretrained=false",
    "model.backbone.output_stride=8",
    "model.rca.memory_size=6",
    "model.rca.num_prototypes=2",
    "model.rca.score_threshold=0.0",
    "data.saliency_dir=unused",
]
DATASET = DatasetInfo(num_classes=4, has_background=True)


def build(*overrides: str):
    cfg = load_config(None, TINY + list(overrides))
    torch.manual_seed(0)
    return build_method(cfg.model, DATASET, 0)


def batch(size: int = 32):
    generator = torch.Generator().manual_seed(2)
    return {
        "image": torch.randn(2, 3, size, size, generator=generator),
        "tags": torch.tensor([[1.0, 1, 0], [0, 0, 1]]),
        "saliency": torch.rand(2, 1, size, size, generator=generator),
        "index": torch.tensor([0, 1]),
        "frame": torch.tensor([[1.0, 0, 1, 0, size, size]] * 2),
    }


def test_per_class_released_head_equals_one_stack_per_class():
    torch.manual_seed(0)
    head = ReleasedHead(6, 3, width=4, per_class=True).double()
    features = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    layers = [module for module in head if isinstance(module, nn.Conv2d)]
    outputs = []
    for c in range(3):  # the release's extra_convs{c}: 4 conv layers of its own
        x = features
        for depth, layer in enumerate(layers):
            rows = slice(4 * c, 4 * c + 4) if depth < 3 else slice(c, c + 1)
            weight = layer.weight[rows]
            x = F.conv2d(x, weight, layer.bias[rows], padding=layer.padding)
            x = x.relu() if depth < 3 else x
        outputs.append(x)
    torch.testing.assert_close(head(features), torch.cat(outputs, 1))
    first = layers[0].weight.detach()
    assert abs(float(first.std()) - 0.01) < 0.002  # the release's N(0, 0.01)


def test_cosine_attention_matches_a_float64_reference():
    aggregation = SemanticAggregation(5, 2, 3, attention="cosine", attention_scale=10.0).double()
    prototypes = torch.randn(2, 3, 5, dtype=torch.float64) * 40
    valid = torch.tensor([True, False])
    aggregation.set_prototypes(prototypes, valid)
    features = torch.randn(1, 5, 2, 3, dtype=torch.float64) * 47
    out = aggregation(features)
    queue = prototypes[0]
    for y in range(2):
        for x in range(3):
            f = features[0, :, y, x]
            cos = torch.stack([torch.dot(f, q) / (f.norm() * q.norm()) for q in queue])
            weights = torch.softmax(10.0 * cos, 0)
            torch.testing.assert_close(out[0, 5:, y, x], (weights[:, None] * queue).sum(0))
    assert torch.equal(out[:, :5], features)


def test_released_reduction_sums_each_images_mean():
    memory = RegionMemory(3, 4, size=5)
    generator = torch.Generator().manual_seed(0)
    memory.enqueue(torch.randn(15, 4, generator=generator), torch.arange(3).repeat(5), torch.ones(15), 0.5)
    embeddings = torch.randn(6, 4, generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    valid = torch.tensor([True, True, False, True, False, False])
    images = torch.tensor([0, 0, 0, 1, 1, 1])
    loss = RegionContrastLoss(0.1, mixup_alpha=0.0, reduction="released")
    got = loss(embeddings, labels, valid, memory, images=images)["loss"]
    banks = [(F.normalize(memory.memory, dim=2), memory.valid)]
    per_region = [
        float(memory_contrast(F.normalize(embeddings[r : r + 1], dim=1), labels[r : r + 1], banks, 0.1, 0.1))
        for r in range(6)
    ]
    expected = (per_region[0] + per_region[1]) / 2 + per_region[3]
    assert math.isclose(float(got), expected, rel_tol=1e-5)
    mean = RegionContrastLoss(0.1, mixup_alpha=0.0)(embeddings, labels, valid, memory)["loss"]
    assert math.isclose(float(mean), (per_region[0] + per_region[1] + per_region[3]) / 3, rel_tol=1e-5)
    with pytest.raises(ValueError, match="images"):
        loss(embeddings, labels, valid, memory)


def test_given_mixup_draws_replace_the_random_ones():
    memory = RegionMemory(2, 4, size=3)
    memory.enqueue(torch.randn(6, 4), torch.tensor([0, 1] * 3), torch.ones(6), 0.5)
    embeddings, labels = torch.randn(2, 4), torch.tensor([0, 1])
    loss = RegionContrastLoss(0.1, mixup_alpha=8.0)
    given = loss(embeddings, labels, torch.ones(2, dtype=torch.bool), memory,
                 partner=torch.tensor([1, 0]), mix_weight=torch.tensor([1.0, 1.0]))  # fmt: skip
    assert torch.allclose(given["mixup"], given["contrast"])  # w = 1: the plain contrast


def test_the_query_projection_feeds_the_contrast_and_the_memory_keeps_f():
    method = build("model.rca.query_projection=released", "model.rca.contrast_start_iter=0")
    method.train()
    data = batch()
    method(data, 0)
    method.after_step(0)
    outputs = method.network(data["image"])
    assert "queries" in outputs and outputs["queries"].shape == outputs["features"].shape
    expected, _ = method.region_embeddings(outputs["features"], outputs["aux_cams"], data["tags"])
    stored = method.memory.memory[0, 0]
    assert torch.allclose(stored, expected[0, 0], atol=1e-5)  # class 0 of image 0: F, not extra_F(F)
    terms = method(data, 1)
    terms["loss"].backward()
    projection = method.network.query_projection
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projection.parameters() if p.dim() > 1)


def test_on_eps_both_heads_have_a_background_channel_and_the_saliency_loss():
    method = build("model.rca.base=eps")
    method.train()
    data = batch()
    terms = method(data, 0)
    assert {"cls", "sal", "cls_aux", "sal_aux"} <= set(terms)
    outputs = method.network(data["image"])
    assert outputs["cams"].shape[1] == outputs["aux_cams"].shape[1] == 4  # background + 3 classes
    base = method.base
    final = base.single_view_losses(data, type("V", (), {"cam": outputs["cams"]})())
    first = base.single_view_losses(data, type("V", (), {"cam": outputs["aux_cams"]})())
    torch.testing.assert_close(terms["loss"], final["loss"] + 0.4 * first["loss"])
    cams = method.cams(data["image"])
    torch.testing.assert_close(cams, outputs["cams"].softmax(1)[:, 1:])
    assert method.inputs == ("image", "tags", "saliency")


def test_on_oaa_the_final_heads_maps_are_accumulated_and_kmeans_keeps_its_interval(tmp_path):
    method = build("model.rca.base=oaa", "model.oaa.start_epoch=0", "model.rca.refresh_interval=3")
    assert method.inputs == ("image", "tags", "index", "frame")
    assert method.refresh_interval(10) == 1  # OAA writes after every iteration
    method.attach_run(RunInfo(tmp_path, iterations_per_epoch=10, iterations=20, sample_names=("a", "b")))
    method.train()
    data = batch()
    installed = []
    for iteration in range(4):
        before = method.network.aggregation.prototypes.clone()
        method(data, iteration)
        method.after_step(iteration)
        method.refresh()
        installed.append(not torch.equal(before, method.network.aggregation.prototypes))
    assert installed == [False, False, True, False]  # k-means after the third step only (interval 3)
    record = read_maps(map_path(tmp_path / "oaa", 0))
    assert record.iteration == 3 and record.classes.tolist() in ([0, 1], [0], [1], [])
    # the maps come from O: a fresh OAA tracking of O's CAMs stages the same maps
    with torch.no_grad():
        cams = method.network.cams(data["image"])
    method.base.track(data, cams)
    assert method.base._tracked[1].shape == (2, 3, 4, 4)
    assert build("model.rca.refresh_interval=3").refresh_interval(10) == 3  # cam base: k-means only


def test_released_learning_rate_groups_keep_the_aggregation_at_1x():
    method = build("model.rca.aggregation=released", "model.rca.query_projection=released",
                   "model.cam.lr_groups=released", "model.cam.nesterov=true")  # fmt: skip
    optimizer = build_optimizer(method, "sgd", 0.001, 0.9, 5e-4)
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert all(group["nesterov"] for group in optimizer.param_groups)
    network = method.network
    assert rate[id(network.aggregation.query.weight)] == pytest.approx(0.001)
    assert rate[id(network.aggregation.query.bias)] == pytest.approx(0.002)
    assert rate[id(network.head.weight)] == pytest.approx(0.01)
    assert rate[id(network.query_projection[0].weight)] == pytest.approx(0.01)
    assert rate[id(network.query_projection[0].bias)] == pytest.approx(0.02)
    backbone_weight = next(p for p in network.backbone.parameters() if p.dim() > 1)
    assert rate[id(backbone_weight)] == pytest.approx(0.001)
