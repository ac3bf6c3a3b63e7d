"""ContrastHead (head contract), ContrastSegLoss (criterion contract) and the memory of ContrastMethod."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from protoseg.losses import ContrastSegLoss, PixelContrastLoss
from protoseg.methods import ContrastMethod
from protoseg.models.heads import ContrastHead, ProjectionHead
from protoseg.prototypes import PixelQueue

CLASSES, CHANNELS, PROJ = 3, 8, 6


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, CHANNELS, 12, 12, generator=generator)
    # blocky labels at 4x the feature resolution; every class has > max_views pixels per image
    target = torch.randint(0, CLASSES, (2, 3, 3), generator=generator)
    target[:, 0, 0], target[:, 1, 1], target[:, 2, 2] = 0, 1, 2
    target = target.repeat_interleave(16, dim=1).repeat_interleave(16, dim=2)
    target[:, :4] = 255
    return features, target


def test_projection_head_layers_and_unit_norm():
    head = ProjectionHead(CHANNELS, PROJ)
    kinds = [type(layer) for layer in head.layers]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    assert head.layers[0].kernel_size == (1, 1) and head.layers[0].out_channels == CHANNELS
    embeddings = head(torch.randn(2, CHANNELS, 5, 7))
    assert embeddings.shape == (2, PROJ, 5, 7)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2, 5, 7), atol=1e-5)


def test_head_outputs_in_training_and_eval():
    features, target = batch()
    head = ContrastHead(CHANNELS, CLASSES, proj_dim=PROJ)
    outputs = head(features, target)
    assert set(outputs) == {"logits", "embeddings"}
    assert outputs["logits"].shape == (2, CLASSES, 12, 12)
    assert outputs["embeddings"].shape == (2, PROJ, 12, 12)
    assert torch.allclose(outputs["embeddings"].norm(dim=1), torch.ones(2, 12, 12), atol=1e-5)
    assert set(head(features)) == {"logits"}
    head.eval()
    eval_outputs = head(features, target)
    assert set(eval_outputs) == {"logits"}
    linear = F.conv2d(features, head.classifier.weight, head.classifier.bias)
    assert torch.allclose(eval_outputs["logits"], linear)


class FeaturesAsImages(nn.Module):
    """Stands in for a Segmentor: the method's "images" are the decoder features."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, images: torch.Tensor, target: torch.Tensor | None = None) -> dict:
        return self.head(images, target)


def memory_method(criterion: ContrastSegLoss) -> ContrastMethod:
    head = ContrastHead(CHANNELS, CLASSES, PROJ, dropout=0.0)
    return ContrastMethod(
        FeaturesAsImages(head), criterion, PixelQueue(CLASSES, PROJ, 50, pixels_per_image=4)
    )


def test_warmup_skips_the_contrast_and_ce_matches_reference():
    features, target = batch()
    head = ContrastHead(CHANNELS, CLASSES, proj_dim=PROJ, dropout=0.0)
    criterion = ContrastSegLoss(start_iter=10, max_views=20)
    criterion.contrast.forward = lambda *args, **kwargs: pytest.fail("contrast computed during warm-up")
    terms = criterion(head(features, target), target, iteration=9)
    with torch.no_grad():
        logits = F.interpolate(head(features)["logits"].double(), size=target.shape[-2:], mode="bilinear")
    scores, labels = logits.permute(0, 2, 3, 1).reshape(-1, CLASSES).tolist(), target.flatten().tolist()
    per_pixel = [
        math.log(sum(math.exp(value) for value in row)) - row[label]
        for row, label in zip(scores, labels) if label != 255
    ]  # fmt: skip
    assert terms["ce"].item() == pytest.approx(sum(per_pixel) / len(per_pixel), rel=1e-5)
    assert terms["contrast"].item() == 0.0 and terms["loss"].item() == pytest.approx(terms["ce"].item())


def test_after_warmup_loss_is_weighted_sum_and_trains_both_heads():
    features, target = batch()
    head = ContrastHead(CHANNELS, CLASSES, proj_dim=PROJ, dropout=0.0)
    criterion = ContrastSegLoss(contrast_weight=0.25, start_iter=0, max_views=20)
    terms = criterion(head(features, target), target, iteration=0)
    assert terms["contrast"].item() > 0
    expected_total = terms["ce"].item() + 0.25 * terms["contrast"].item()
    assert terms["loss"].item() == pytest.approx(expected_total, rel=1e-6)
    terms["loss"].backward()
    assert head.classifier.weight.grad.abs().sum() > 0
    assert head.projection.layers[0].weight.grad.abs().sum() > 0

    again = ContrastSegLoss(contrast_weight=0.25, start_iter=0, max_views=20)
    head.zero_grad()
    assert again(head(features, target), target)["contrast"].item() == pytest.approx(terms["contrast"].item())


def test_contrast_uses_detached_argmax_predictions():
    features, target = batch()
    head = ContrastHead(CHANNELS, CLASSES, proj_dim=PROJ)
    outputs = head(features, target)
    seen = {}

    def spy(embeddings, labels, predictions, memory, generator, num_classes):
        seen["predictions"], seen["num_classes"] = predictions, num_classes
        return embeddings.sum() * 0

    criterion = ContrastSegLoss(start_iter=0)
    criterion.contrast.forward = spy
    criterion(outputs, target)
    assert torch.equal(seen["predictions"], outputs["logits"].argmax(1))
    assert not seen["predictions"].requires_grad
    assert seen["num_classes"] == CLASSES


def test_ce_weight_zero_reports_zero_ce():
    features, target = batch()
    head = ContrastHead(CHANNELS, CLASSES, proj_dim=PROJ)
    terms = ContrastSegLoss(ce_weight=0.0, start_iter=0, max_views=20)(head(features, target), target)
    assert terms["ce"].item() == 0.0
    assert terms["loss"].item() == pytest.approx(0.1 * terms["contrast"].item())
    before_warmup = ContrastSegLoss(ce_weight=0.0, start_iter=5)(head(features, target), target)
    assert before_warmup["loss"].item() == 0.0 and before_warmup["loss"].requires_grad


def test_memory_is_contrasted_before_it_is_filled_and_filled_during_warmup():
    features, target = batch()
    inputs = {"image": features, "mask": target}
    criterion = ContrastSegLoss(start_iter=1, max_views=20)
    method = memory_method(criterion)
    method(inputs, 0)  # warm-up: no contrast, but the step's pixels are enqueued after it
    assert int(method.memory.pixel_filled.sum()) == 0, "the memory is written after the step, not in it"
    method.after_step(0)
    assert method.memory.pixel_filled.tolist() == [8, 8, 8] and method.memory.segment_filled.tolist() == [
        2,
        2,
        2,
    ]

    fresh = memory_method(criterion)
    terms = fresh(inputs, 1)
    assert terms["contrast"].item() == 0.0, "an empty memory has no positive: the loss came before enqueue"
    fresh.after_step(1)
    assert int(fresh.memory.pixel_filled.sum()) == 24

    outputs = fresh.network(features, target)
    before = PixelQueue(CLASSES, PROJ, size=50, pixels_per_image=4)
    before.load_state_dict(fresh.memory.state_dict())
    replay = torch.Generator().set_state(criterion.generator(features.device).get_state())
    expected = PixelContrastLoss(max_views=20)(
        outputs["embeddings"], target, outputs["logits"].argmax(1), before, replay
    )
    projection = list(fresh.network.head.projection.parameters())
    expected_gradient = torch.autograd.grad(0.1 * expected, projection)
    terms = fresh(inputs, 2)
    assert terms["contrast"].item() == pytest.approx(expected.item(), rel=1e-6) and expected.item() > 0
    # CE does not reach the projection: its gradient is the weighted contrast's, against the old memory
    gradient = torch.autograd.grad(terms["loss"], projection)
    for ours, reference in zip(gradient, expected_gradient):
        assert torch.allclose(ours, reference, atol=1e-7)
    fresh.after_step(2)
    assert int(fresh.memory.pixel_filled.sum()) == 48
    assert not any(buffer.requires_grad for buffer in fresh.memory.buffers())
    assert "memory.pixel_queue" in fresh.state_dict()


def test_bad_sampling_raises():
    with pytest.raises(ValueError, match="sampling"):
        ContrastSegLoss(sampling="semi-hard")
