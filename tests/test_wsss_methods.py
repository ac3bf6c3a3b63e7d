"""WSSS methods: the CAM baseline, PPC's two-view construction, and a tiny end-to-end step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from protoseg.losses import PixelToPrototypeContrast
from protoseg.methods import CAMMethod, PPCMethod
from protoseg.models.cam import CAMNet, cam_classification_loss


class TinyConvBackbone(nn.Module):
    """One conv level at stride 4 (no BatchNorm, so that two calls on the same input agree)."""

    def __init__(self) -> None:
        super().__init__()
        self.out_channels = [12]
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 12, 3, stride=2, padding=1),
            nn.ReLU(),
        )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.body(images)]


def make_network(num_classes: int = 4) -> CAMNet:
    torch.manual_seed(0)
    return CAMNet(TinyConvBackbone(), num_classes=num_classes, proj_dim=16)


def ppc(network: CAMNet, scale_factor: float = 0.5, **options) -> PPCMethod:
    return PPCMethod(network, PixelToPrototypeContrast(**options), scale_factor=scale_factor)


def batch_of(images: torch.Tensor, tags: torch.Tensor) -> dict:
    return {"image": images, "tags": tags}


def make_batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    tags = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    return images, tags


def test_baseline_loss_is_the_classification_loss():
    torch.manual_seed(0)
    network = CAMNet(TinyConvBackbone(), num_classes=4, proj_dim=None)
    method = CAMMethod(network)
    images, tags = make_batch()
    terms = method(batch_of(images, tags))
    torch.testing.assert_close(terms["loss"], cam_classification_loss(network(images)["cam"], tags))
    assert set(terms) == {"loss", "cls"} and method.num_classes == 4
    assert method.cams(images).shape == (2, 4, 16, 16)


def test_ppc_two_views_and_total_match_a_manual_computation():
    network = make_network()
    contrast = PixelToPrototypeContrast(top_k=16, generator=torch.Generator().manual_seed(3))
    method = PPCMethod(network, contrast, scale_factor=0.5)
    images, tags = make_batch()
    terms = method(batch_of(images, tags))

    target_images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(method.target_view(images), target_images)
    source, target = network(images), network(target_images)
    cls = 0.5 * (cam_classification_loss(source["cam"], tags) + cam_classification_loss(target["cam"], tags))
    aligned = [
        F.interpolate(source[key], size=(8, 8), mode="bilinear", align_corners=False)
        for key in ("cam", "features")
    ]
    expected = PixelToPrototypeContrast(top_k=16, generator=torch.Generator().manual_seed(3))(
        aligned[0], aligned[1], target["cam"], target["features"], tags
    )
    torch.testing.assert_close(terms["cls"], cls.detach())
    for key in ("cp", "cc", "intra"):
        torch.testing.assert_close(terms[key], expected[key])
    torch.testing.assert_close(terms["loss"], cls + expected["loss"])
    assert all(terms[key] > 0 for key in ("cls", "cp", "cc", "intra"))


def test_ppc_target_size_overrides_scale_factor():
    method = PPCMethod(make_network(), PixelToPrototypeContrast(), target_size=24)
    assert method.target_view(torch.zeros(1, 3, 80, 60)).shape == (1, 3, 24, 24)
    default = PPCMethod(make_network(), PixelToPrototypeContrast())
    assert default.target_view(torch.zeros(1, 3, 448, 448)).shape == (1, 3, 134, 134)


@pytest.mark.parametrize("mining", ["paper", "released"])
def test_ppc_end_to_end_step(mining):
    network = make_network()
    method = ppc(network, mining=mining, top_k=8)
    images, tags = make_batch()
    tags[1] = 0  # an image without tags
    terms = method(batch_of(images, tags), 0)
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert network.projector.weight.grad.abs().sum() > 0  # the contrast reaches the projector
    assert method.cams(images).shape == (2, 4, 16, 16)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
    optimizer.step()
    assert torch.isfinite(method(batch_of(images, tags))["loss"])


def test_ppc_method_step_has_no_host_synchronisation():
    method = ppc(make_network(), top_k=8, generator=torch.Generator())
    images, tags = make_batch()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        method(batch_of(images, tags))["loss"].backward()
    names = {event.name for event in profile.events()}
    assert not names & {"aten::nonzero", "aten::item", "aten::_local_scalar_dense"}


def test_bad_options_name_the_value():
    with pytest.raises(TypeError, match="top_kk"):
        ppc(make_network(), top_kk=3)
    with pytest.raises(ValueError, match="scale_factor"):
        ppc(make_network(), scale_factor=1.5)
    with pytest.raises(ValueError, match="projector"):
        PPCMethod(CAMNet(TinyConvBackbone(), num_classes=4, proj_dim=None), PixelToPrototypeContrast())
