"""CAMNet: shapes, channel layout, and the classification loss against a float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from protoseg.models.cam import CAMNet, cam_classification_loss


class TinyConvBackbone(nn.Module):
    """Two conv levels (strides 2 and 4) returning a list of feature maps, like the timm wrapper."""

    def __init__(self) -> None:
        super().__init__()
        self.out_channels = [6, 10]
        self.first = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.second = nn.Conv2d(6, 10, 3, stride=2, padding=1)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        first = torch.relu(self.first(images))
        return [first, torch.relu(self.second(first))]


def test_shapes_and_channel_layout():
    torch.manual_seed(0)
    network = CAMNet(TinyConvBackbone(), num_classes=5, proj_dim=7)
    images = torch.randn(3, 3, 32, 24)
    outputs = network(images)
    assert outputs["cam"].shape == (3, 6, 8, 6)
    assert outputs["features"].shape == (3, 7, 8, 6)
    assert torch.all(outputs["features"] >= 0)  # projector ends with a ReLU
    assert network.classifier.bias is None and network.projector.bias is None
    assert network.classifier.in_channels == 10  # the last feature level
    cams = network.cams(images)
    assert cams.shape == (3, 5, 8, 6)
    torch.testing.assert_close(cams, outputs["cam"][:, 1:])  # channel 0 is the background


def test_classification_loss_matches_float64_reference():
    generator = torch.Generator().manual_seed(1)
    cam = torch.randn(4, 4, 3, 5, generator=generator) * 3
    tags = torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]])
    expected = 0.0
    for b in range(4):
        per_image = 0.0
        for c in range(3):
            score = sum(float(cam[b, c + 1, i, j]) for i in range(3) for j in range(5)) / 15
            log_sigmoid = -math.log1p(math.exp(-score))
            log_one_minus = -math.log1p(math.exp(score))
            per_image -= float(tags[b, c]) * log_sigmoid + (1 - float(tags[b, c])) * log_one_minus
        expected += per_image / 3
    expected /= 4
    loss = cam_classification_loss(cam, tags)
    assert math.isclose(float(loss), expected, rel_tol=1e-5)
    # the background channel plays no part
    shifted = cam.clone()
    shifted[:, 0] += 100
    assert torch.equal(cam_classification_loss(shifted, tags), loss)


def test_classification_loss_trains_the_classifier():
    torch.manual_seed(2)
    network = CAMNet(TinyConvBackbone(), num_classes=3)
    outputs = network(torch.randn(2, 3, 16, 16))
    network.classification_loss(outputs["cam"], torch.tensor([[1.0, 0, 0], [0, 1, 1]])).backward()
    assert network.classifier.weight.grad[1:].abs().sum() > 0
    assert torch.all(network.classifier.weight.grad[0] == 0)  # background row gets no gradient from cls
    assert network.projector.weight.grad is None


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="num_classes"):
        CAMNet(TinyConvBackbone(), num_classes=0)
    with pytest.raises(ValueError, match="out_channels"):
        CAMNet(nn.Identity(), num_classes=3)
